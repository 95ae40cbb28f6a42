"""The runtime stage of each container image installs every Debian package that
provides a shared library our binaries link directly (readelf NEEDED -> ldd path
-> dpkg -S), so an image built from deploy/images starts instead of failing
with "error while loading shared libraries". Libraries of debian:12-slim itself
(libc6, libstdc++6, libgcc-s1) need no install.

usage: check_image_deps.py [--elsewhere=PKG[,PKG]] DOCKERFILE BINARY...
  --elsewhere: packages whose libraries the image provides another way (the
  GPU image copies PyTorch's CUDA libtorch instead of Debian's libtorch1.13).
"""

import os
import re
import subprocess
import sys

IN_BASE_IMAGE = {"libc6", "libstdc++6", "libgcc-s1"}


def needed(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def resolved_paths(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\S+) => (\S+) \(", out, re.M)}


def owning_package(path):
    candidates = [path, os.path.realpath(path)]
    for p in list(candidates):  # merged /usr: dpkg may record either spelling
        if p.startswith("/usr/lib/"):
            candidates.append(p[len("/usr"):])
        elif p.startswith("/lib/"):
            candidates.append("/usr" + p)
    for p in candidates:
        out = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0].strip()
    return None


def runtime_packages(dockerfile):
    """Packages the last stage installs with apt-get install."""
    with open(dockerfile) as f:
        text = f.read().replace("\\\n", " ")
    last_stage = re.split(r"^FROM\s", text, flags=re.M)[-1]
    packages = set()
    for line in last_stage.splitlines():
        for cmd in re.findall(r"apt-get install ([^&;]+)", line):
            packages.update(w for w in cmd.split() if not w.startswith("-") and not w.startswith("$"))
    return packages


def main():
    args = sys.argv[1:]
    elsewhere = set()
    while args and args[0].startswith("--elsewhere="):
        elsewhere.update(args.pop(0).split("=", 1)[1].split(","))
    dockerfile, binaries = args[0], args[1:]
    installed = runtime_packages(dockerfile) | elsewhere
    missing = {}
    for b in binaries:
        paths = resolved_paths(b)
        for lib in needed(b):
            if lib not in paths:
                missing.setdefault("(unresolved)", set()).add(lib)
                continue
            pkg = owning_package(paths[lib])
            if pkg is None:
                missing.setdefault("(no package)", set()).add(lib)
            elif pkg not in installed and pkg not in IN_BASE_IMAGE:
                missing.setdefault(pkg, set()).add(lib)
    if missing:
        for pkg, libs in sorted(missing.items()):
            print("%s: %s is needed by %s" % (dockerfile, pkg, ", ".join(sorted(libs))))
        sys.exit(1)
    print("%s: runtime stage installs all %d packages our binaries link" % (os.path.basename(dockerfile), len(installed)))


if __name__ == "__main__":
    main()
