"""Jobs for the partner side: completing asynchronous provisioning, pushing config after a token rotation."""

from __future__ import annotations

from broker import outbound, provisioning
from broker.vault import Vault
from worker import context


def complete_provision(resource_id: str) -> str:
    settings = context.settings()
    with outbound.session() as session:
        return provisioning.complete(context.connection, settings, Vault(settings.fernet_keys),
                                     session, resource_id)


def push_config(resource_id: str) -> str:
    settings = context.settings()
    with outbound.session() as session:
        return provisioning.push_config(context.connection, settings, Vault(settings.fernet_keys),
                                        session, resource_id)
