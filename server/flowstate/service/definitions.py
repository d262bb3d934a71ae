"""The definitions registry's use cases: register a tenant's definition, read and list them.

A submitted document (from the API, a YAML file through the CLI, or an SDK mapping) is checked
by the pure core (`flowstate.core.definition_document`: every problem at once, with paths,
MALFORMED_REQUEST) before the store sees it; nothing is stored on refusal. The store decides
versions, idempotency and shadowing in one transaction (`flowstate.storage.definitions_repo`).
See docs/definitions.md.
"""

from __future__ import annotations

from flowstate.core.commands import Context
from flowstate.core.definition_document import definition_from_document
from flowstate.core.model import Tenant
from flowstate.storage.definitions_repo import DefinitionPage, StoredDefinition
from flowstate.storage.limits import check_context
from flowstate.storage.store import FlowStore

__all__ = ["get_definition", "list_definitions", "register_definition"]


async def register_definition(
    store: FlowStore,
    tenant: Tenant,
    document: object,
    ctx: Context,
    *,
    allow_shadow_builtin: bool = False,
    validate_only: bool = False,
) -> tuple[StoredDefinition, bool]:
    """Validate `document` and register it for `tenant`: (the stored version, created)."""
    check_context(ctx)
    submitted = definition_from_document(document)
    return await store.definitions.register(
        tenant,
        submitted,
        request_id=ctx.request_id,
        now=ctx.now,
        allow_shadow_builtin=allow_shadow_builtin,
        validate_only=validate_only,
    )


async def get_definition(
    store: FlowStore, tenant: Tenant, name: str, version: int | None = None
) -> StoredDefinition:
    """A definition in `tenant`'s view (its own and the built-ins); DEFINITION_NOT_FOUND."""
    return await store.definitions.get_stored(name, version, tenant=tenant)


async def list_definitions(
    store: FlowStore, tenant: Tenant, *, name: str = "", page_size: int = 0, page_token: str = ""
) -> DefinitionPage:
    """One page of the definitions `tenant` can use (see `FlowStore.definitions.list_page`)."""
    return await store.definitions.list_page(
        tenant, name=name, page_size=page_size, page_token=page_token
    )
