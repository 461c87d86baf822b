"""The admin token: never a well-known one.

`ADMIN_TOKEN` erases every sale (`/clear/`), so a stack must not come up with a token that
someone else knows. A token given is refused when it is short or a known placeholder; without
one, `ADMIN_TOKEN_FILE` names where the stack keeps its own: generated at first start (random,
256 bits), kept there across restarts, read back by

    python -m shared.admin_token [FILE]   # prints the token kept in FILE (default $ADMIN_TOKEN_FILE)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import sys

MIN_LENGTH = 20
# Placeholders from our own earlier defaults and from every tutorial: refused whatever the case.
KNOWN_PLACEHOLDERS = frozenset(
    {"change-me", "changeme", "change_me", "changeit", "admin", "password", "secret", "token", "test"}
)
HOW_TO_MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check(token: str) -> None:
    """Raise ValueError when the token is one an attacker would try first."""
    if token.strip().lower() in KNOWN_PLACEHOLDERS:
        raise ValueError(f"ADMIN_TOKEN is a well-known placeholder; set a random one ({HOW_TO_MAKE_ONE})")
    if len(token) < MIN_LENGTH:
        raise ValueError(
            f"ADMIN_TOKEN is {len(token)} characters; it must have at least {MIN_LENGTH} ({HOW_TO_MAKE_ONE})"
        )


def read(path: str) -> str | None:
    """The token kept in the file, or None when there is no such file yet."""
    try:
        token = pathlib.Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    if not token:
        raise ValueError(f"ADMIN_TOKEN_FILE {path} is empty: delete it to have a new token generated")
    return token


def read_or_create(path: str) -> tuple[str, bool]:
    """(the token in the file, whether it was generated now). The new file appears whole and
    readable by its owner only; when several processes start at once, one token wins."""
    token = read(path)
    if token is not None:
        return token, False
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    draft = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(draft, target)  # fails if another process linked its own first
        created = True
    except FileExistsError:
        created = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            draft.unlink()
    # the new name on disk too: after a power loss the token said in the log must still be there
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    token = read(path)
    assert token is not None
    return token, created


def main(argv: list[str]) -> int:
    path = argv[0] if argv else os.environ.get("ADMIN_TOKEN_FILE")
    if not argv and os.environ.get("ADMIN_TOKEN"):
        print(os.environ["ADMIN_TOKEN"])
        return 0
    if not path:
        print("neither ADMIN_TOKEN nor ADMIN_TOKEN_FILE is set", file=sys.stderr)
        return 1
    try:
        token = read(path)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if token is None:
        print(f"{path} does not exist yet: the API generates it at its first start", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
