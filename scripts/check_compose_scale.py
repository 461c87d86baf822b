"""Check that compose can run several copies of a service (`docker compose up --scale worker=3`).

    python scripts/check_compose_scale.py [-f FILE ...] [SERVICE ...]     (default: worker)

Reads the resolved file from `docker-compose config` (or `docker compose config`) and fails
when a service to scale has what only one container can have: a container_name, a fixed
hostname, or a host port. Each worker container then has its own hostname, so its stream
consumer name (hostname-pid) is its own too. Exit 1 with the reasons; 0 when all can scale.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import yaml


def resolved_config(files: list[str]) -> dict:
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    command += [arg for name in files for arg in ("-f", name)] + ["config"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return yaml.safe_load(result.stdout)


def blockers(service: dict) -> list[str]:
    found = []
    if "container_name" in service:
        found.append(f"container_name {service['container_name']!r}")
    if "hostname" in service:
        found.append(f"hostname {service['hostname']!r}")
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published = port.get("published")
        else:
            published = str(port).rsplit(":", 1)[0] if ":" in str(port) else None
        if published:  # a bare container port gets a random host port per container: fine
            found.append(f"host port {published}")
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-f", "--file", action="append", default=[], help="compose file (repeatable), as docker-compose -f"
    )
    parser.add_argument("services", nargs="*", default=["worker"])
    args = parser.parse_args(argv)
    services = resolved_config(args.file)["services"]
    failed = False
    for name in args.services:
        if name not in services:
            print(f"{name}: no such service", file=sys.stderr)
            failed = True
            continue
        if problems := blockers(services[name]):
            print(f"{name} cannot be scaled: {', '.join(problems)}", file=sys.stderr)
            failed = True
        else:
            print(f"{name}: no container_name, hostname or host port: `--scale {name}=N` can run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
