#!/usr/bin/env python3
"""Builds the AWS Lambda deployment zip of StrataMQ (`strata-lambda.zip`, runtime `provided.al2023`).

    deploy/lambda/package.py                      # cargo build --release, strip, check, zip
    deploy/lambda/package.py --profile dev        # the same from a dev build (target/debug)
    deploy/lambda/package.py --binary PATH        # package an already built `bootstrap`
    deploy/lambda/package.py --check-only PATH    # only check that PATH can run on provided.al2023

The zip holds exactly one entry, `bootstrap`, with unix mode 0755 in its external attributes
(Lambda runs the file named `bootstrap` of a custom runtime and needs it executable).

Before zipping, the binary is checked against what `provided.al2023` (Amazon Linux 2023)
offers, from the ELF file itself (no readelf/objdump needed):

- a 64-bit little-endian x86-64 ELF (the Terraform module creates an x86_64 function);
- every DT_NEEDED library is one of glibc's or libgcc_s (AL2023's minimal image has no OpenSSL,
  zlib, ...: the crate uses rustls with aws-lc-rs, statically linked);
- no symbol needs a GLIBC version above 2.34 (AL2023 ships glibc 2.34). A newer one is named
  with its symbol, e.g. `arc4random@GLIBC_2.36`; the fix is to link against an older glibc
  (cargo-zigbuild with the target `x86_64-unknown-linux-gnu.2.34`).

A failed check prints one line per problem and exits 1; the zip is not written.
Standard library only (zipfile, struct): no `zip` CLI. `strip` is used when it is on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Amazon Linux 2023's glibc is 2.34; a binary needing a newer GLIBC_x.y symbol does not start.
GLIBC_MAX = (2, 34)
# Libraries present on provided.al2023 that a Rust binary may link dynamically: glibc's own
# (libpthread, libdl, librt and libutil are stubs in glibc >= 2.34 but still exist) and libgcc_s
# (unwinding). Anything else (libssl, libz, ...) is not in the runtime image.
ALLOWED_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
}
INTERPRETER = "/lib64/ld-linux-x86-64.so.2"

ZIP_ENTRY = "bootstrap"
ZIP_MODE = 0o100755  # regular file, rwxr-xr-x

# ELF constants (System V gABI and the GNU symbol-versioning extension).
EM_X86_64 = 62
PT_INTERP = 3
SHT_DYNAMIC = 6
SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
DT_NULL = 0
DT_NEEDED = 1
SHN_UNDEF = 0


class ElfError(Exception):
    """The file is not an ELF file this checker can read."""


@dataclass
class ElfInfo:
    machine: int
    interpreter: str | None
    needed: list[str]
    # Every version a dependency must provide: (library, version name), e.g. ("libc.so.6", "GLIBC_2.34").
    version_needs: list[tuple[str, str]]
    # Undefined dynamic symbols with their required version: (symbol, library, version).
    versioned_imports: list[tuple[str, str, str]] = field(default_factory=list)


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "replace")


def read_elf(data: bytes) -> ElfInfo:
    """Parses what the runtime check needs from an ELF64 little-endian file: the machine, the
    interpreter, DT_NEEDED, the version needs (.gnu.version_r) and which undefined dynamic
    symbol needs which version (.dynsym + .gnu.version)."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2:
        raise ElfError("not a 64-bit ELF file (ELFCLASS64 expected)")
    if data[5] != 1:
        raise ElfError("not a little-endian ELF file")
    try:
        return _read_elf64(data)
    except (struct.error, ValueError, IndexError) as e:
        raise ElfError(f"truncated or malformed ELF file: {e}") from e


def _read_elf64(data: bytes) -> ElfInfo:
    (e_machine,) = struct.unpack_from("<H", data, 18)
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)

    interpreter = None
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].split(b"\0", 1)[0].decode("utf-8", "replace")

    # (type, offset, size, link, info, entsize) per section.
    sections = []
    for i in range(e_shnum):
        _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, sh_info, _align, sh_entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, e_shoff + i * e_shentsize
        )
        sections.append((sh_type, sh_offset, sh_size, sh_link, sh_info, sh_entsize))

    def strtab(index: int) -> bytes:
        _t, off, size, *_ = sections[index]
        return data[off : off + size]

    needed: list[str] = []
    for sh_type, off, size, link, _info, entsize in sections:
        if sh_type == SHT_DYNAMIC:
            strs = strtab(link)
            for pos in range(off, off + size, entsize or 16):
                d_tag, d_val = struct.unpack_from("<qQ", data, pos)
                if d_tag == DT_NULL:
                    break
                if d_tag == DT_NEEDED:
                    needed.append(_cstr(strs, d_val))

    # .gnu.version_r: Elf64_Verneed {vn_version, vn_cnt, vn_file, vn_aux, vn_next} followed by
    # Elf64_Vernaux {vna_hash, vna_flags, vna_other, vna_name, vna_next} entries.
    version_needs: list[tuple[str, str]] = []
    by_index: dict[int, tuple[str, str]] = {}
    for sh_type, off, _size, link, info, _entsize in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strs = strtab(link)
        pos = off
        for _ in range(info):
            _ver, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, pos)
            lib = _cstr(strs, vn_file)
            apos = pos + vn_aux
            for _ in range(vn_cnt):
                _hash, _flags, vna_other, vna_name, vna_next = struct.unpack_from("<IHHII", data, apos)
                name = _cstr(strs, vna_name)
                version_needs.append((lib, name))
                by_index[vna_other] = (lib, name)
                if vna_next == 0:
                    break
                apos += vna_next
            if vn_next == 0:
                break
            pos += vn_next

    # .gnu.version holds one 16-bit version index per .dynsym entry (bit 15: hidden).
    versioned_imports: list[tuple[str, str, str]] = []
    dynsym = next((s for s in sections if s[0] == SHT_DYNSYM), None)
    versym = next((s for s in sections if s[0] == SHT_GNU_VERSYM), None)
    if dynsym is not None and versym is not None:
        _t, off, size, link, _info, entsize = dynsym
        strs = strtab(link)
        count = size // (entsize or 24)
        for i in range(count):
            st_name, _st_info, _st_other, st_shndx = struct.unpack_from("<IBBH", data, off + i * (entsize or 24))
            (ver,) = struct.unpack_from("<H", data, versym[1] + 2 * i)
            ver &= 0x7FFF
            if st_shndx == SHN_UNDEF and ver in by_index:
                lib, name = by_index[ver]
                versioned_imports.append((_cstr(strs, st_name), lib, name))

    return ElfInfo(e_machine, interpreter, needed, version_needs, versioned_imports)


def glibc_version(name: str) -> tuple[int, ...] | None:
    """`GLIBC_2.34` -> (2, 34); None for a name that is not a numbered GLIBC version."""
    m = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", name)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def fmt_version(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


def al2023_problems(info: ElfInfo) -> list[str]:
    """Why the binary cannot run on provided.al2023 (x86_64); empty when it can."""
    problems = []
    if info.machine != EM_X86_64:
        problems.append(f"not an x86-64 binary (ELF e_machine {info.machine}, 62 expected)")
    if info.interpreter is not None and info.interpreter != INTERPRETER:
        problems.append(f"program interpreter {info.interpreter}, {INTERPRETER} expected")
    for lib in info.needed:
        if lib not in ALLOWED_LIBS:
            problems.append(
                f"links {lib}, which provided.al2023 does not have (it has glibc's libraries and "
                f"libgcc_s only): link it statically or drop the dependency"
            )
    too_new: dict[str, list[str]] = {}
    for lib, name in info.version_needs:
        if not name.startswith("GLIBC_"):
            continue  # e.g. libgcc_s's GCC_3.0
        v = glibc_version(name)
        if v is None:
            too_new.setdefault(name, [])  # GLIBC_PRIVATE: not a stable interface
        elif v > GLIBC_MAX:
            too_new.setdefault(name, [])
    for sym, _lib, name in info.versioned_imports:
        if name in too_new:
            too_new[name].append(f"{sym}@{name}")
    for name in sorted(too_new, key=lambda n: glibc_version(n) or (999,)):
        syms = too_new[name]
        shown = ", ".join(syms[:5]) + (f" and {len(syms) - 5} more" if len(syms) > 5 else "")
        v = glibc_version(name)
        need = f"glibc {fmt_version(v)}" if v else name
        problems.append(
            f"needs {need} ({shown or name}), but provided.al2023 has glibc {fmt_version(GLIBC_MAX)}: "
            f"build against glibc {fmt_version(GLIBC_MAX)} "
            f"(cargo zigbuild --target x86_64-unknown-linux-gnu.{fmt_version(GLIBC_MAX)})"
        )
    return problems


def max_glibc(info: ElfInfo) -> tuple[int, ...] | None:
    versions = [v for _lib, n in info.version_needs if (v := glibc_version(n)) is not None]
    return max(versions) if versions else None


def check_binary(path: Path) -> ElfInfo:
    """Reads `path` and raises SystemExit with every problem when it cannot run on provided.al2023."""
    try:
        info = read_elf(path.read_bytes())
    except (OSError, ElfError) as e:
        raise SystemExit(f"error: {path}: {e}") from None
    problems = al2023_problems(info)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SystemExit(f"error: {path} cannot run on provided.al2023:\n{lines}")
    return info


def target_dir() -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["target_directory"])


def cargo_build(profile: str) -> Path:
    cmd = ["cargo", "build", "--profile", profile, "-p", "strata-lambda", "--bin", "bootstrap"]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise SystemExit("error: cargo build of the bootstrap binary failed")
    # Cargo puts the `dev` profile in target/debug, every other profile in target/<profile>.
    binary = target_dir() / ("debug" if profile == "dev" else profile) / "bootstrap"
    if not binary.is_file():
        raise SystemExit(f"error: cargo build succeeded but {binary} is missing")
    return binary


def write_zip(binary: Path, out: Path) -> None:
    """`out` with one deflated entry `bootstrap` (mode 0755), written atomically."""
    info = zipfile.ZipInfo(ZIP_ENTRY, date_time=(1980, 1, 1, 0, 0, 0))
    info.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    info.external_attr = ZIP_MODE << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(info, binary.read_bytes())
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--profile", default="release", help="cargo profile to build (default: release; `dev` = target/debug)")
    src.add_argument("--binary", type=Path, help="package this bootstrap binary instead of building one")
    src.add_argument("--check-only", type=Path, metavar="BINARY", help="only check BINARY for provided.al2023")
    ap.add_argument("--out", type=Path, default=ROOT / "strata-lambda.zip", help="zip to write (default: strata-lambda.zip at the repository root)")
    ap.add_argument("--no-strip", action="store_true", help="zip the binary as built (default: strip it when `strip` is on PATH)")
    args = ap.parse_args(argv)

    if args.check_only is not None:
        info = check_binary(args.check_only)
        print(f"ok: {args.check_only} can run on provided.al2023 (highest glibc needed: {fmt_version(max_glibc(info) or (0,))})")
        return 0

    binary = args.binary if args.binary is not None else cargo_build(args.profile)
    if not binary.is_file():
        raise SystemExit(f"error: {binary} is not a file")
    with tempfile.TemporaryDirectory(prefix="strata-lambda-") as tmp:
        staged = Path(tmp) / ZIP_ENTRY
        shutil.copyfile(binary, staged)
        strip = None if args.no_strip else shutil.which("strip")
        if strip is not None:
            subprocess.run([strip, "--strip-all", str(staged)], check=True)
        elif not args.no_strip:
            print("note: `strip` not found, zipping the binary unstripped", file=sys.stderr)
        info = check_binary(staged)
        os.chmod(staged, 0o755)
        write_zip(staged, args.out)
        size = staged.stat().st_size
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes; bootstrap {size} bytes"
        f"{', stripped' if strip else ''}; highest glibc needed: {fmt_version(max_glibc(info) or (0,))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
