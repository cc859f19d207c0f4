"""Who may do what: roles from a TOML file (``TRIPWIRE_ROLES``), checked by the
command line before it acts, and every attempt audited with the actor.

    [users]
    alice = ["engineer"]
    bob = ["analyst", "approver"]

The permissions of each role are :data:`PERMISSIONS`. Without a roles file every
user may do everything (a first run, a laptop); a bank configures one, and
restricts writes to the command topics (Kafka ACLs) to the hosts that run the
command line. The user is the login name, or ``TRIPWIRE_USER`` where a wrapper
(SSO, a bastion) has established it.

>>> r = Roles({"alice": frozenset({"engineer"})}, configured=True)
>>> r.may("alice", "actions.resume"), r.may("bob", "actions.resume")
(True, False)
>>> Roles({}, configured=False).may("anyone", "alerts.pause")
True
"""

from __future__ import annotations

import getpass
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PERMISSIONS", "Roles", "current_user"]

# what each role may do (an action is an audit record's action)
PERMISSIONS: dict[str, frozenset[str]] = {
    "analyst": frozenset({"override", "cases.assign", "cases.close"}),
    "approver": frozenset({"override", "controls.approve", "actions.resume", "alerts.resume",
                           "monitor.mode"}),
    "engineer": frozenset({"actions.resume", "alerts.pause", "alerts.resume",
                           "alerts.replay-dead", "sink.pause", "sink.resume",
                           "controls.activate", "monitor.mode"}),
}


def current_user() -> str:
    return os.environ.get("TRIPWIRE_USER") or getpass.getuser()


@dataclass(frozen=True)
class Roles:
    users: dict[str, frozenset[str]]
    configured: bool

    @classmethod
    def load(cls, path: Path | None) -> Roles:
        if path is None:
            return cls({}, configured=False)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"roles file {path}: {exc}") from exc
        users = {}
        for user, roles in (data.get("users") or {}).items():
            unknown = set(roles) - set(PERMISSIONS)
            if unknown:
                raise ValueError(f"roles file {path}: {user} has unknown role(s) "
                                 f"{sorted(unknown)}; roles: {', '.join(PERMISSIONS)}")
            users[user] = frozenset(roles)
        return cls(users, configured=True)

    def may(self, user: str, action: str) -> bool:
        if not self.configured:
            return True
        return any(action in PERMISSIONS[r] for r in self.users.get(user, ()))

    def who_may(self, action: str) -> list[str]:
        """The roles that may do ``action``."""
        return sorted(r for r, allowed in PERMISSIONS.items() if action in allowed)
