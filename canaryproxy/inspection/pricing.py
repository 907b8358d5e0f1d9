"""The cost of one request from its token counts and a price table."""

from __future__ import annotations

from canaryproxy.core.types import Role
from canaryproxy.inspection.settings import Price, PriceTable


def price_for(table: PriceTable, response_model: str | None, request_model: str | None, role: Role) -> Price | None:
    """The exact model the upstream reports, else the model the client asked for, else the role's price.

    Response models are often dated snapshots ("gpt-4o-2024-08-06") of the name asked for, so both
    names are tried before falling back to the version's price.
    """
    for model in (response_model, request_model):
        if model is not None and (price := table.models.get(model)) is not None:
            return price
    # A shadow answer is the canary's, at the canary's price (reported apart: the exporter's role).
    return table.roles.get(Role.CANARY if role is Role.SHADOW else role)


def cost_usd(price: Price, prompt_tokens: int | None, completion_tokens: int | None) -> float:
    return (
        (prompt_tokens or 0) * price.input_per_million
        + (completion_tokens or 0) * price.output_per_million
    ) / 1_000_000
