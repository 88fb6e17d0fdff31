"""The checks of scripts/check-deploy that need Python (run with the venv of scripts/python).

  checks.py k8s VERSION…      every manifest under deploy/k8s against the Kubernetes JSON schemas
                              of each VERSION (kubernetes-validate, offline, strict: unknown
                              fields fail, and so does a kind without a schema); each file
                              given on stdin instead when --stdin NAME is passed
  checks.py kustomization     deploy/k8s/kustomization.yaml names files that exist, and every
                              manifest of deploy/k8s (examples/ aside) is named
  checks.py flags BIN_DIR     every --flag the manifests and units pass, and every key of the
                              daemons' TOML files, is one the binaries in BIN_DIR accept (--help)
  checks.py dockerfiles       the runtime stage runs as a numeric non-root USER, nothing is ADDed
                              from a URL, the FEATURES built exist, and Dockerfile.offline pulls
                              no image

Prints one line per finding; exit status 1 when there is one. Reads no network.
"""
import glob
import os
import re
import shlex
import subprocess
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
KUSTOMIZATION = "kustomization.yaml"


def rel(path):
    return os.path.relpath(path, ROOT)


def manifests():
    """Every Kubernetes manifest under deploy/k8s (kustomization.yaml is kustomize's, not one)."""
    files = sorted(glob.glob(os.path.join(K8S, "**", "*.yaml"), recursive=True))
    return [f for f in files if os.path.basename(f) != KUSTOMIZATION]


def documents(path, text=None):
    if text is None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return [d for d in yaml.safe_load_all(text) if d is not None]


def check_k8s(versions, stdin_name=None):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    sources = [(stdin_name, documents(stdin_name, sys.stdin.read()))] if stdin_name else [
        (rel(f), documents(f)) for f in manifests()
    ]
    failures = resources = 0
    for name, docs in sources:
        if not docs:
            print(f"{name}: no resource in it")
            failures += 1
        for doc in docs:
            resources += 1
            what = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    print(f"{name}: {what} is invalid for Kubernetes {version}: {path}: {e.message}")
                    failures += 1
                except SchemaNotFoundError as e:
                    print(f"{name}: {what}: {e}")
                    failures += 1
    print(f"k8s: {resources} resources in {len(sources)} files, Kubernetes {', '.join(versions)}: "
          f"{'ok' if not failures else f'{failures} errors'}", file=sys.stderr)
    return failures


def check_kustomization():
    with open(os.path.join(K8S, KUSTOMIZATION), encoding="utf-8") as f:
        listed = yaml.safe_load(f).get("resources") or []
    failures = 0
    for name in listed:
        if not os.path.isfile(os.path.join(K8S, name)):
            print(f"deploy/k8s/{KUSTOMIZATION}: resource {name} does not exist")
            failures += 1
    for path in manifests():
        name = os.path.relpath(path, K8S)
        if not name.startswith("examples" + os.sep) and name not in listed:
            print(f"deploy/k8s/{KUSTOMIZATION}: {name} is not among its resources")
            failures += 1
    return failures


# Flags of the binaries' own command lines that are no key of their TOML files.
NOT_TOML_KEYS = {"config", "log-format", "help", "version"}


def accepted_flags(binary, *subcommand):
    out = subprocess.run([binary, *subcommand, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)", out, re.MULTILINE))


def flags_in(tokens):
    return [t[2:].split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def check_flags(bin_dir):
    coordinator = os.path.join(bin_dir, "flotilla-coordinator")
    client = os.path.join(bin_dir, "flotilla-client")
    known = {
        "flotilla-coordinator": accepted_flags(coordinator),
        # `--log-format` comes before `run`, the rest after it.
        "flotilla-client": accepted_flags(client) | accepted_flags(client, "run"),
    }
    uses = []  # (where, binary, [flags])
    for path in manifests():
        for doc in documents(path):
            pod = (((doc.get("spec") or {}).get("template") or {}).get("spec")) or {}
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                command = container.get("command") or []
                binary = os.path.basename(command[0]) if command else ""
                if binary in known:
                    uses.append((f"{rel(path)} ({container['name']})", binary,
                                 flags_in(command[1:] + (container.get("args") or []))))
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.service"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("ExecStart="):
                    tokens = shlex.split(line.split("=", 1)[1])
                    binary = os.path.basename(tokens[0].lstrip("-@:+!"))
                    if binary in known:
                        uses.append((rel(path), binary, flags_in(tokens[1:])))
    failures = 0
    for where, binary, flags in uses:
        for flag in flags:
            if flag not in known[binary]:
                print(f"{where}: {binary} has no flag --{flag}")
                failures += 1
    # TOML keys: the ConfigMaps' *.toml entries and deploy/edge/*.toml.
    tomls = []
    for path in manifests():
        for doc in documents(path):
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith(".toml"):
                        binary = "flotilla-client" if "client" in key else "flotilla-coordinator"
                        tomls.append((f"{rel(path)} ({key})", binary, text))
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.toml"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            binary = "flotilla-client" if "client" in os.path.basename(path) else "flotilla-coordinator"
            tomls.append((rel(path), binary, f.read()))
    import tomllib

    for where, binary, text in tomls:
        try:
            keys = tomllib.loads(text).keys()
        except tomllib.TOMLDecodeError as e:
            print(f"{where}: not TOML: {e}")
            failures += 1
            continue
        for key in keys:
            if key not in known[binary] - NOT_TOML_KEYS:
                print(f"{where}: {key!r} is no key of {binary}'s configuration file (no such flag)")
                failures += 1
    print(f"flags: {sum(len(u[2]) for u in uses)} flags in {len(uses)} command lines, "
          f"{len(tomls)} TOML files: {'ok' if not failures else f'{failures} errors'}", file=sys.stderr)
    return failures


def instructions(path):
    """(line, INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out, pending, start = [], "", 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if pending and stripped.startswith("#"):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = pending + stripped
            pending = ""
            word, _, rest = text.partition(" ")
            out.append((start, word.upper(), rest.strip()))
    return out


def crate_features(crate):
    """The [features] of the workspace member named `crate` (empty when there is none)."""
    import tomllib

    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    for member in members:
        with open(os.path.join(ROOT, member, "Cargo.toml"), "rb") as f:
            manifest = tomllib.load(f)
        if manifest["package"]["name"] == crate:
            return set(manifest.get("features", {}))
    return set()


def check_dockerfiles():
    failures = 0

    def fail(path, line, message):
        nonlocal failures
        print(f"{rel(path)}:{line}: {message}")
        failures += 1

    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "Dockerfile*"))):
        if path.endswith(".dockerignore"):
            continue
        steps = instructions(path)
        froms = [i for i, (_, word, _) in enumerate(steps) if word == "FROM"]
        if not froms:
            fail(path, 1, "no FROM")
            continue
        final = steps[froms[-1]:]
        users = [(line, args) for line, word, args in final if word == "USER"]
        if not users:
            fail(path, final[0][0], "the runtime stage sets no USER (it would run as root)")
        else:
            line, user = users[-1]
            uid = user.split(":")[0]
            if not uid.isdigit():
                fail(path, line, f"USER {user}: give a numeric uid (Kubernetes' runAsNonRoot checks it)")
            elif int(uid) == 0:
                fail(path, line, "USER 0: the runtime stage runs as root")
        for line, word, args in steps:
            if word == "ADD" and re.search(r"(^|\s)(https?|git|ssh)://|(^|\s)git@", args):
                fail(path, line, "ADD from a URL: fetch in a RUN step with a checksum, or COPY")
        # Build features (`ARG FEATURES=crate/feature …`) that the crates declare.
        for line, word, args in steps:
            if word == "ARG" and args.startswith("FEATURES="):
                for feature in args.split("=", 1)[1].strip("\"'").replace(",", " ").split():
                    crate, _, name = feature.rpartition("/")
                    if name not in crate_features(crate):
                        fail(path, line, f"FEATURES: {crate or 'the workspace'} has no feature {name!r}")
        if path.endswith(".offline"):
            with open(path, encoding="utf-8") as f:
                if re.search(r"^#\s*syntax\s*=", f.read(), re.MULTILINE | re.IGNORECASE):
                    fail(path, 1, "a `# syntax=` directive makes BuildKit pull a frontend image")
            for line, word, args in steps:
                if word == "FROM" and args.split()[0].lower() != "scratch":
                    fail(path, line, f"FROM {args}: the offline image may not pull a base image")
                if word == "COPY" and "--from" not in args:
                    sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
                    for source in sources:
                        if not source.startswith("dist/image/"):
                            fail(path, line, f"COPY {source}: .dockerignore admits only dist/image/ of dist/")
    return failures


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "k8s":
        stdin_name = None
        if rest[:1] == ["--stdin"]:
            stdin_name, rest = rest[1], rest[2:]
        failures = check_k8s(rest, stdin_name)
    elif command == "kustomization":
        failures = check_kustomization()
    elif command == "flags":
        failures = check_flags(rest[0])
    elif command == "dockerfiles":
        failures = check_dockerfiles()
    else:
        print(f"unknown check {command}", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
