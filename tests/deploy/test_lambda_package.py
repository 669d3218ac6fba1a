"""The Lambda deployment zip (deploy/lambda/package.py) built from the dev `bootstrap` the test
command already builds: one entry `bootstrap`, mode 0755, the binary's bytes, a binary that starts
after unzipping, and the provided.al2023 check (glibc <= 2.34, no library AL2023 lacks) passing on
it and failing, with a message naming the cause, on real binaries that need glibc 2.36 or libssl."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import deploytools as dt

PACKAGE_PY = dt.DEPLOY / "lambda" / "package.py"

_spec = importlib.util.spec_from_file_location("strata_lambda_package", PACKAGE_PY)
pkg = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pkg  # dataclasses look their module up while the file executes
_spec.loader.exec_module(pkg)


def bootstrap_bin() -> Path:
    """target/debug/bootstrap, next to STRATA_BIN when tests/run.sh sets it."""
    exe = dt.strata_bin()
    path = (exe.parent if exe is not None else dt.ROOT / "target" / "debug") / "bootstrap"
    if not path.exists():
        pytest.fail(f"{path} is not built: cargo build -p strata-lambda", pytrace=False)
    return path


def package(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PACKAGE_PY), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def compile_c(tmp_path: Path, name: str, source: str, *libs: str) -> Path:
    """A real dynamically linked executable made by the system C compiler."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on PATH to build the negative-case binaries")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    proc = subprocess.run([cc, "-O1", "-o", str(out), str(src), *libs], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"cc failed: {proc.stderr}"
    return out


def test_zip_holds_exactly_the_bootstrap_binary_mode_0755(tmp_path):
    binary = bootstrap_bin()
    out = tmp_path / "strata-lambda.zip"
    proc = package("--binary", binary, "--no-strip", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"highest glibc needed: 2\.\d+", proc.stdout), proc.stdout
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["bootstrap"], [i.filename for i in infos]
        info = infos[0]
        assert info.create_system == 3, "external attributes must be unix ones (create_system 3)"
        mode = info.external_attr >> 16
        assert stat.S_ISREG(mode), oct(mode)
        assert stat.S_IMODE(mode) == 0o755, oct(mode)
        assert zf.read("bootstrap") == binary.read_bytes(), "the zipped bytes differ from the binary"
    assert not out.with_name(out.name + ".tmp").exists()


def test_stripped_zip_unpacks_to_a_binary_that_starts(tmp_path):
    binary = bootstrap_bin()
    if shutil.which("strip") is None:
        pytest.skip("strip (binutils) is not on PATH: the stripped variant is not built")
    out = tmp_path / "strata-lambda.zip"
    proc = package("--binary", binary, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "stripped" in proc.stdout, proc.stdout
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(out) as zf:
        [info] = zf.infolist()
        data = zf.read(info)
        assert 0 < len(data) < binary.stat().st_size, "strip should have made the binary smaller"
        unpacked.mkdir()
        target = unpacked / info.filename
        target.write_bytes(data)
        # Lambda applies the zip's unix mode, as here.
        os.chmod(target, stat.S_IMODE(info.external_attr >> 16))
    assert pkg.al2023_problems(pkg.read_elf(data)) == []
    # No configuration: the function must start, name the missing variable and exit 1 (its
    # init-error path), which proves the stripped file is a working executable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_LAMBDA_"))}
    run = subprocess.run([str(target)], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert "STRATA_META_ADDRS" in run.stderr, run.stderr


def test_dev_bootstrap_fits_provided_al2023_and_matches_binutils():
    binary = bootstrap_bin()
    info = pkg.read_elf(binary.read_bytes())
    assert pkg.al2023_problems(info) == []
    assert info.machine == pkg.EM_X86_64
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed
    top = pkg.max_glibc(info)
    assert top is not None and (2, 2) <= top <= (2, 34), top
    imported = {(sym, ver) for sym, _lib, ver in info.versioned_imports}
    assert any(v.startswith("GLIBC_") for _s, v in imported)

    # The parser against binutils on the same file, where binutils is installed.
    readelf = shutil.which("readelf")
    if readelf is not None:
        dyn = subprocess.run([readelf, "-dW", str(binary)], capture_output=True, text=True, check=True).stdout
        assert re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn) == info.needed
    objdump = shutil.which("objdump")
    if objdump is not None:
        dump = subprocess.run([objdump, "-T", str(binary)], capture_output=True, text=True, check=True).stdout
        # `0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main`
        undef = set(re.findall(r"\*UND\*\s+\S+\s+\(?(GLIBC_[0-9.]+)\)?\s+(\S+)$", dump, re.M))
        assert undef, dump[:2000]
        assert {(s, v) for v, s in undef} == {(s, v) for s, v in imported if v.startswith("GLIBC_")}


def test_check_refuses_a_binary_needing_glibc_2_36(tmp_path):
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    m = re.fullmatch(r"glibc (\d+)\.(\d+)", libc)
    if not m or (int(m[1]), int(m[2])) < (2, 36):
        pytest.skip(f"host has {libc or 'no glibc'}: cannot link arc4random@GLIBC_2.36 here")
    exe = compile_c(
        tmp_path,
        "needs236",
        "#include <stdlib.h>\nint main(void) { return (int)(arc4random() & 1); }\n",
    )
    proc = package("--check-only", exe)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "cannot run on provided.al2023" in proc.stderr, proc.stderr
    assert "needs glibc 2.36 (arc4random@GLIBC_2.36)" in proc.stderr, proc.stderr
    assert "x86_64-unknown-linux-gnu.2.34" in proc.stderr, proc.stderr

    # Packaging it fails the same way and writes no zip.
    out = tmp_path / "bad.zip"
    proc = package("--binary", exe, "--out", out)
    assert proc.returncode == 1 and "arc4random@GLIBC_2.36" in proc.stderr, proc.stderr
    assert not out.exists()


def test_check_refuses_a_binary_linked_to_libssl(tmp_path):
    # libssl-dev is installed by tests/run.sh (the rdkafka test client builds librdkafka with SSL).
    # The call keeps the library NEEDED even under --as-needed.
    exe = compile_c(
        tmp_path,
        "usesssl",
        "int OPENSSL_init_ssl(unsigned long long opts, const void *settings);\n"
        "int main(void) { return OPENSSL_init_ssl(0, 0) ? 0 : 1; }\n",
        "-lssl",
    )
    proc = package("--check-only", exe)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert re.search(r"links libssl\.so\.\d+, which provided\.al2023 does not have", proc.stderr), proc.stderr
    out = tmp_path / "bad.zip"
    proc = package("--binary", exe, "--out", out)
    assert proc.returncode == 1 and "libssl.so" in proc.stderr, proc.stderr
    assert not out.exists()


def test_check_refuses_other_architectures_and_non_elf_files(tmp_path):
    data = bytearray(bootstrap_bin().read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    arm = tmp_path / "arm"
    arm.write_bytes(bytes(data))
    proc = package("--check-only", arm)
    assert proc.returncode == 1 and "not an x86-64 binary (ELF e_machine 183" in proc.stderr, proc.stderr

    script = tmp_path / "bootstrap.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    proc = package("--check-only", script)
    assert proc.returncode == 1 and "not an ELF file" in proc.stderr, proc.stderr
