#!/usr/bin/env bash
# Packs what benchmarks/proxy.py needs on a bare GPU box that reaches no package registry (Python 3.12 there,
# with torch, transformers, tokenizers and numpy 2.x), beside this checkout:
#   .whl/   cp312 wheels of the proxy's dependencies, at the versions this checkout's .venv has, and numpy 1.26
#   .devb/  pytriton.tar.xz (the embedded tritonserver: 3.12 stub only, no bundled libpython) and setup.sh
# Both are ignored through .git/info/exclude. On the box, from the checkout's root:
#   source .devb/setup.sh && python3 benchmarks/proxy.py --streams 64,256 --workers 1,2,4,8 ...
# setup.sh makes an overlay venv in /tmp/venv whose site-packages (numpy 1.26, our wheels, pytriton) come
# before the box's own: the python-backend stub imports numpy from the first python3 on PATH, and with numpy 2.x
# a model's output tensors arrive empty.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python
SITE=$($VENV_PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

mkdir -p .git/info
for ignored in /.whl/ /.devb/; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
done
rm -rf .whl .devb
mkdir -p .whl .devb

# What the proxy, Triton's client and the benchmark import that the box lacks (the box's torch, transformers,
# tokenizers, jinja2 and huggingface_hub are used as they are).
PACKAGES="fastapi starlette uvicorn httptools pydantic pydantic-core annotated-types typing-inspection
typing-extensions anyio sniffio h11 click typer rich shellingham markdown-it-py mdurl pygments
prometheus-client tomlkit filelock grpcio protobuf tritonclient python-rapidjson urllib3 httpx httpcore
certifi idna packaging nvidia-ml-py pyyaml"
pins=()
for name in $PACKAGES; do
    version=$($VENV_PY -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ]; then
        echo "device_bundle: $name is not installed in .venv (run make install)" >&2
        exit 1
    fi
    pins+=("$name==$version")
done
pins+=("numpy==1.26.4")
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
    manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
echo "device_bundle: downloading ${#pins[@]} cp312 wheels" >&2
$VENV_PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"

echo "device_bundle: packing the embedded tritonserver" >&2
tar -C "$SITE" -cJf .devb/pytriton.tar.xz \
    --exclude='__pycache__' --exclude='nvidia_pytriton.libs/libpython3*' \
    --exclude='pytriton/tritonserver/python_backend_stubs/3.[0-9]' \
    --exclude='pytriton/tritonserver/python_backend_stubs/3.1[013-9]' \
    pytriton nvidia_pytriton.libs

cat >.devb/setup.sh <<'SETUP'
# Sourced on the box from the checkout's root: an overlay venv in /tmp/venv, first on PATH.
set -e
python3 -m venv --without-pip /tmp/venv
OVERLAY=$(/tmp/venv/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BOX=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OVERLAY" .whl/*.whl
tar -C "$OVERLAY" -xJf .devb/pytriton.tar.xz
echo "$PWD/src" >"$OVERLAY/00_trtforge_src.pth"
echo "$BOX" >"$OVERLAY/zz_box.pth"  # torch, transformers, tokenizers: after ours, so numpy 1.26 wins
export PATH=/tmp/venv/bin:$PATH
# The 3.12 stub links libpython3.12.so: the box's, from its interpreter's LIBDIR.
LD_LIBRARY_PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
nvidia-smi -L || true
echo "cores: $(nproc); $(python3 -V); numpy $(python3 -c 'import numpy; print(numpy.__version__)')"
set +e
SETUP
du -sh .whl .devb >&2
