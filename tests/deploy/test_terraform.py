"""Static checks of terraform/: formatting, documented and wired variables and outputs, the boot
scripts' inputs and flags, the contract resources of each module, and checkov."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import deploytools as dt

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (tests/deploy/requirements.txt)")

MODULES = {"aws": dt.TERRAFORM / "modules" / "aws", "gcp": dt.TERRAFORM / "modules" / "gcp"}
EXAMPLES = {
    "aws-3-node": (dt.TERRAFORM / "examples" / "aws-3-node", "aws"),
    "gcp": (dt.TERRAFORM / "examples" / "gcp", "gcp"),
}
# Script templates rendered with templatefile(): the file and the module that renders it.
TEMPLATES = {"aws": "user_data.sh.tftpl", "gcp": "startup.sh.tftpl"}


def unq(value):
    """python-hcl2 8 keeps the quotes of strings and block labels: strip them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def parse_dir(path: Path) -> dict[str, list]:
    """All blocks of the .tf files of one directory, merged by block type."""
    merged: dict[str, list] = {}
    for f in sorted(path.glob("*.tf")):
        with f.open() as fh:
            for kind, blocks in hcl2.load(fh).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def named(blocks: list) -> dict[str, dict]:
    """`variable "x" {...}` blocks as {"x": body}."""
    out = {}
    for blk in blocks:
        for label, body in blk.items():
            out[unq(label)] = body
    return out


def resources(parsed: dict) -> dict[str, dict]:
    """{"aws_s3_bucket.history": body}."""
    out = {}
    for blk in parsed.get("resource", []):
        for rtype, inner in blk.items():
            for rname, body in inner.items():
                out[f"{unq(rtype)}.{unq(rname)}"] = body
    return out


def source_text(path: Path) -> str:
    return "\n".join(f.read_text() for f in sorted(path.iterdir()) if f.suffix in (".tf", ".tftpl"))


def readme_names(path: Path, heading: str) -> list[str]:
    """First-column names of the README table under `## <heading>`."""
    text = (path / "README.md").read_text()
    m = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"{path}/README.md has no '## {heading}' section"
    return re.findall(r"^\| `([a-z0-9_]+)` \|", m.group(1), re.M)


# --- formatting ---------------------------------------------------------------------------


def test_terraform_fmt_check():
    exe = shutil.which("terraform")
    if exe is None:
        pytest.skip("terraform is not on PATH: `terraform fmt -check` not run")
    proc = subprocess.run(
        [exe, "fmt", "-check", "-recursive", "-diff", str(dt.TERRAFORM)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}\n{proc.stderr}"


# --- modules: documented, pinned, wired ---------------------------------------------------


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_variable_has_a_description_a_type_and_a_readme_row(module):
    path = MODULES[module]
    variables = named(parse_dir(path).get("variable", []))
    assert len(variables) >= 10, f"{module}: only {len(variables)} variables parsed"
    rows = readme_names(path, "Inputs")
    for name, body in variables.items():
        description = unq(body.get("description", ""))
        assert len(description.split()) >= 3, f"{module}: variable {name} has no real description"
        assert "type" in body, f"{module}: variable {name} has no type"
        assert name in rows, f"{module}: variable {name} is missing from the README's Inputs table"
    assert sorted(set(rows)) == sorted(rows), f"{module}: a variable is documented twice"
    stale = set(rows) - set(variables)
    assert not stale, f"{module}: the README documents variables that do not exist: {sorted(stale)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_output_has_a_description_and_a_readme_row(module):
    path = MODULES[module]
    outputs = named(parse_dir(path).get("output", []))
    rows = readme_names(path, "Outputs")
    for name, body in outputs.items():
        assert len(unq(body.get("description", "")).split()) >= 3, f"{module}: output {name} has no real description"
        assert name in rows, f"{module}: output {name} is missing from the README's Outputs table"
    stale = set(rows) - set(outputs)
    assert not stale, f"{module}: the README documents outputs that do not exist: {sorted(stale)}"
    # The bootstrap addresses are the point of the outputs.
    assert {"kafka_bootstrap", "mqtt_endpoint", "broker_addresses", "meta_peers", "wal_peers"} <= set(outputs)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_variable_is_used_and_every_reference_declared(module):
    path = MODULES[module]
    variables = set(named(parse_dir(path).get("variable", [])))
    text = "\n".join(f.read_text() for f in sorted(path.glob("*.tf")))
    referenced = set(re.findall(r"\bvar\.([a-z0-9_]+)", text))
    assert not referenced - variables, f"{module}: undeclared variables referenced: {sorted(referenced - variables)}"
    assert not variables - referenced, f"{module}: variables declared but never used: {sorted(variables - referenced)}"
    locals_declared = set()
    for blk in parse_dir(path).get("locals", []):
        locals_declared |= set(blk)
    locals_used = set(re.findall(r"\blocal\.([a-z0-9_]+)", text))
    assert not locals_used - locals_declared, f"{module}: undeclared locals: {sorted(locals_used - locals_declared)}"


@pytest.mark.parametrize("directory", ["modules/aws", "modules/gcp", "examples/aws-3-node", "examples/gcp"])
def test_versions_pin_terraform_and_providers(directory):
    parsed = parse_dir(dt.TERRAFORM / directory)
    blocks = parsed.get("terraform", [])
    assert blocks, f"{directory}: no terraform block (versions.tf)"
    tf = blocks[0]
    assert unq(tf.get("required_version", "")).startswith(">="), f"{directory}: required_version not pinned"
    providers = tf["required_providers"][0]
    assert providers, f"{directory}: no required_providers"
    for name, spec in providers.items():
        if name == "__is_block__":
            continue
        assert unq(spec["source"]).startswith("hashicorp/"), f"{directory}: provider {name} source {spec['source']}"
        assert re.match(r"~> \d+\.\d+", unq(spec["version"])), f"{directory}: provider {name} not pinned: {spec['version']}"


# --- boot scripts: inputs and strata flags -------------------------------------------------


def templatefile_keys(module: str) -> set[str]:
    """Keys of the map passed to templatefile("<template>", {...}) in the module."""
    text = "\n".join(f.read_text() for f in sorted(MODULES[module].glob("*.tf")))
    start = text.index(f'templatefile("${{path.module}}/{TEMPLATES[module]}", {{')
    depth, i = 0, text.index('", {', start) + 3
    body_start = i
    while True:
        ch = text[i]
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            break
        i += 1
    body = text[body_start + 1 : i]
    return set(re.findall(r"^\s*([a-z_][a-z0-9_]*)\s*=", body, re.M))


def template_identifiers(module: str) -> set[str]:
    """Identifiers a template reads in its ${...} interpolations ($${ is a literal)."""
    text = (MODULES[module] / TEMPLATES[module]).read_text()
    names = set()
    for expr in re.findall(r"(?<!\$)\$\{([^}]*)\}", text):
        expr = re.sub(r'"[^"]*"', "", expr)  # string literals
        for ident in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", expr):
            names.add(ident)
    return names


@pytest.mark.parametrize("module", sorted(MODULES))
def test_boot_script_gets_exactly_the_values_it_reads(module):
    given = templatefile_keys(module)
    read = template_identifiers(module)
    assert read, f"{module}: no interpolation found in {TEMPLATES[module]}"
    assert not read - given, f"{module}: {TEMPLATES[module]} reads values templatefile() does not pass: {sorted(read - given)}"
    assert not given - read, f"{module}: templatefile() passes values {TEMPLATES[module]} never reads: {sorted(given - read)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_boot_script_runs_strata_with_real_flags(module):
    known = dt.strata_start_flags()
    text = (MODULES[module] / TEMPLATES[module]).read_text()
    strata_cmd = text[text.index('"${image}" start') :]
    used = dt.flags_used(strata_cmd)
    assert {"--roles", "--node-id", "--meta-peers", "--wal-peers", "--object-store", "--wal-dir"} <= used
    assert not used - known, f"{module}: flags `strata start` does not have: {sorted(used - known)}"
    # Environment variables that set config keys name documented keys.
    keys = dt.documented_config_keys()
    for env in re.findall(r"\b(STRATA_[A-Z0-9_]+)=", text):
        assert env in dt.NON_CONFIG_ENV or dt.env_to_key(env, keys), f"{module}: {env} names no config key"


# --- modules: the resources the deployment contract promises ------------------------------


def test_aws_module_contract():
    parsed = parse_dir(MODULES["aws"])
    res = resources(parsed)
    kinds = {name.split(".")[0] for name in res}
    for required in [
        "aws_s3_bucket",
        "aws_s3_bucket_lifecycle_configuration",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_public_access_block",
        "aws_kms_key",
        "aws_iam_role",
        "aws_iam_policy",
        "aws_launch_template",
        "aws_autoscaling_group",
        "aws_lb",
        "aws_lb_listener",
        "aws_lambda_function",
        "aws_lambda_function_url",
        "aws_cloudwatch_metric_alarm",
    ]:
        assert required in kinds, f"aws module has no {required}"

    lifecycle = res["aws_s3_bucket_lifecycle_configuration.history"]
    rules = lifecycle["rule"]
    assert any("abort_incomplete_multipart_upload" in r for r in rules), "no rule aborts incomplete multipart uploads"
    sse = res["aws_s3_bucket_server_side_encryption_configuration.history"]["rule"][0]
    assert unq(sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"]) == "aws:kms"

    assert unq(res["aws_lb.this"]["load_balancer_type"]) == "network"
    listener_ports = {res[n]["port"] for n in res if n.startswith("aws_lb_listener.")}
    assert "${var.kafka_port}" in listener_ports and "${var.mqtt_port}" in listener_ports

    fn = res["aws_lambda_function.http"]
    assert fn["filename"] == "${var.lambda_artifact_path}", "the Lambda zip must come from lambda_artifact_path"
    lambda_locals = {k: v for blk in parsed["locals"] for k, v in blk.items()}
    assert lambda_locals["lambda_enabled"] == "${var.lambda_artifact_path != null}", "the Lambda must wait for its zip"
    assert fn["count"] == "${local.lambda_enabled ? 1 : 0}"
    assert res["aws_lambda_function_url.http"]["authorization_type"] == "${var.lambda_url_auth_type}"

    # The nodes' object permissions are limited to the prefix of this bucket.
    text = source_text(MODULES["aws"])
    objects_doc = text[text.index('data "aws_iam_policy_document" "objects"') :]
    objects_doc = objects_doc[: objects_doc.index('resource "aws_iam_policy" "objects"')]
    assert '"${aws_s3_bucket.history.arn}/${var.object_prefix}/*"' in objects_doc
    assert '"s3:*"' not in objects_doc and 'resources = ["*"]' not in objects_doc

    lt = res["aws_launch_template.node"]
    assert unq(lt["metadata_options"][0]["http_tokens"]) == "required", "IMDSv2 must be required"
    alarms = [n for n in res if n.startswith("aws_cloudwatch_metric_alarm.")]
    assert len(alarms) >= 3, alarms


def test_gcp_module_contract():
    res = resources(parse_dir(MODULES["gcp"]))
    for required in [
        "google_storage_bucket.history",
        "google_service_account.node",
        "google_storage_bucket_iam_member.node_objects",
        "google_compute_instance_template.node",
        "google_compute_instance_group_manager.node",
        "google_compute_region_backend_service.this",
        "google_compute_forwarding_rule.this",
    ]:
        assert required in res, f"gcp module has no {required}"
    bucket = res["google_storage_bucket.history"]
    assert bucket["uniform_bucket_level_access"] is True
    assert unq(bucket["public_access_prevention"]) == "enforced"
    actions = {unq(r["action"][0]["type"]) for r in bucket["lifecycle_rule"]}
    assert "AbortIncompleteMultipartUpload" in actions
    template = res["google_compute_instance_template.node"]
    text = source_text(MODULES["gcp"])
    assert 'disk_type    = "local-ssd"' in text, "nodes must get a local SSD"
    assert template["service_account"][0]["email"] == "${google_service_account.node.email}"
    assert unq(res["google_compute_instance_group_manager.node"]["stateful_disk"][0]["delete_rule"]) == "NEVER"
    fr = res["google_compute_forwarding_rule.this"]
    assert "var.load_balancer_scheme" in fr["load_balancing_scheme"], "internal/external must be selectable"


# --- examples call the modules with declared inputs ----------------------------------------


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_passes_declared_and_required_inputs(example):
    path, module = EXAMPLES[example]
    calls = named(parse_dir(path).get("module", []))
    assert calls, f"{example}: calls no module"
    variables = named(parse_dir(MODULES[module]).get("variable", []))
    required = {n for n, body in variables.items() if "default" not in body}
    for name, body in calls.items():
        assert (path / unq(body["source"])).resolve() == MODULES[module].resolve()
        args = {k for k in body if k not in ("source", "__is_block__", "providers", "depends_on")}
        assert not args - set(variables), f"{example}: module {name} gets unknown inputs {sorted(args - set(variables))}"
        assert not required - args, f"{example}: module {name} misses required inputs {sorted(required - args)}"
    outputs = named(parse_dir(path).get("output", []))
    assert "kafka_bootstrap" in outputs, f"{example}: no kafka_bootstrap output"
    module_outputs = set(named(parse_dir(MODULES[module]).get("output", [])))
    for name, body in outputs.items():
        for ref in re.findall(r"module\.[a-z_]+\.([a-z0-9_]+)", str(body["value"])):
            assert ref in module_outputs, f"{example}: output {name} reads unknown module output {ref}"


# --- checkov ------------------------------------------------------------------------------


def test_checkov_terraform_clean():
    report = dt.run_checkov("-d", str(dt.TERRAFORM), "--framework", "terraform")
    dt.assert_checkov_clean(report)
    # Both modules and every example were scanned.
    files = {c["file_path"] for c in report["results"]["passed_checks"]}
    for part in ["/modules/aws/", "/modules/gcp/", "/examples/aws-3-node/", "/examples/gcp/"]:
        assert any(part in f for f in files), f"checkov did not scan {part}"


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_validation_names_its_variable(module):
    variables = named(parse_dir(MODULES[module]).get("variable", []))
    validated = {n: b["validation"] for n, b in variables.items() if "validation" in b}
    assert {"name", "node_count"} <= set(validated), f"{module}: name and node_count must be validated"
    for name, rules in validated.items():
        for rule in rules:
            assert f"var.{name}" in rule["condition"], f"{module}: validation of {name} does not read it"
            assert unq(rule["error_message"]).startswith(name), f"{module}: the error of {name} must name it"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_name_validation_accepts_and_rejects_the_right_names(module):
    rule = named(parse_dir(MODULES[module])["variable"])["name"]["validation"][0]
    pattern = re.search(r'regex\("(.+?)", var\.name\)', rule["condition"]).group(1).replace("\\\\", "\\")
    ok = lambda n: re.search(pattern, n) is not None  # noqa: E731 - Terraform's regex() finds a match
    for good in ("strata", "strata-prod", "s1"):
        assert ok(good), f"{module}: {good!r} rejected"
    for bad in ("Strata", "1strata", "s", "strata_prod", "x" * 22, ""):
        assert not ok(bad), f"{module}: {bad!r} accepted"
    longest = max((n for n in ("a" * k for k in range(1, 40)) if ok(n)), key=len)
    if module == "aws":
        # AWS load balancer and target group names are at most 32 characters.
        assert len(f"{longest}-broker-9") <= 32 and len(f"{longest}-nlb") <= 32
    else:
        # GCP service account ids are 6-30 characters.
        assert len(f"{longest}-node") <= 30
