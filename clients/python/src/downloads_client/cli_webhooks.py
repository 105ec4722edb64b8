"""`downloads webhooks add|list|remove|deliveries`: your webhook endpoints from a terminal."""

import argparse
from typing import TYPE_CHECKING

from .client import Client
from .webhooks import Webhook, WebhookDelivery

if TYPE_CHECKING:
    from .ui import Ui

EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.expired")


def webhooks_commands_add(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", common: argparse.ArgumentParser
) -> None:
    webhooks = commands.add_parser(
        "webhooks",
        parents=[common],
        help="your webhook endpoints: add, list, remove, deliveries",
        description="The endpoints the service calls when your jobs end (signed deliveries: "
        "check them with downloads_client.verify_webhook).",
    )
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")

    add = actions.add_parser(
        "add",
        parents=[common],
        help="add an endpoint; prints its secret, shown only now",
        description="Add an endpoint at URL (https). Its secret is printed once: keep it to verify "
        "deliveries.",
    )
    add.add_argument("endpoint_url", metavar="URL")  # not `url`: that is --url, the service's
    add.add_argument(
        "--event",
        dest="events",
        action="append",
        choices=EVENTS,
        metavar="EVENT",
        help=f"an event to send there, again for more ({', '.join(EVENTS)}; default: all)",
    )
    add.add_argument("--description", default="", help="a note of yours")
    add.set_defaults(handler=_add)

    listing = actions.add_parser("list", parents=[common], help="your endpoints")
    listing.set_defaults(handler=_list)

    remove = actions.add_parser("remove", parents=[common], help="delete an endpoint")
    remove.add_argument("webhook_id", metavar="ID")
    remove.set_defaults(handler=_remove)

    deliveries = actions.add_parser("deliveries", parents=[common], help="an endpoint's recent deliveries")
    deliveries.add_argument("webhook_id", metavar="ID")
    deliveries.set_defaults(handler=_deliveries)


def _line(webhook: Webhook) -> str:
    parts = [webhook.id, webhook.url, ",".join(webhook.events)]
    if webhook.disabled:
        parts.append(f"disabled ({webhook.disabled_reason})" if webhook.disabled_reason else "disabled")
    if webhook.description:
        parts.append(repr(webhook.description))
    return "  ".join(parts)


def _delivery_line(delivery: WebhookDelivery) -> str:
    parts = [delivery.id, delivery.event, delivery.job_id, delivery.status, f"{delivery.attempts} attempt(s)"]
    if delivery.last_status_code is not None:
        parts.append(f"HTTP {delivery.last_status_code}")
    if delivery.last_error:
        parts.append(delivery.last_error)
    if delivery.next_attempt_at:
        parts.append(f"next {delivery.next_attempt_at}")
    return "  ".join(parts)


def _add(client: Client, args: argparse.Namespace, ui: "Ui") -> int:
    webhook = client.webhook_create(args.endpoint_url, events=args.events, description=args.description)
    ui.note("the secret below is shown only now: keep it to verify deliveries")
    ui.result(f"{_line(webhook)}\nsecret: {webhook.secret}", webhook.raw)
    return 0


def _list(client: Client, args: argparse.Namespace, ui: "Ui") -> int:
    webhooks = client.webhooks()
    ui.result("\n".join(map(_line, webhooks)), [webhook.raw for webhook in webhooks])
    return 0


def _remove(client: Client, args: argparse.Namespace, ui: "Ui") -> int:
    client.webhook_delete(args.webhook_id)
    ui.result(f"{args.webhook_id} removed", {"id": args.webhook_id, "removed": True})
    return 0


def _deliveries(client: Client, args: argparse.Namespace, ui: "Ui") -> int:
    deliveries = client.webhook_deliveries(args.webhook_id)
    ui.result("\n".join(map(_delivery_line, deliveries)), [delivery.raw for delivery in deliveries])
    return 0
