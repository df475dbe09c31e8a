#!/usr/bin/env bash
# The runtime tests (tests/runtime: numpy, onnx, onnxruntime only) against the NEWEST releases, unconstrained,
# in a throw-away venv. The README's commands install the tested versions of constraints.txt, so a new
# upstream release cannot break them; this check shows when one would. It prints one summary line and exits
# with pytest's status; .ci/run runs it first and reports, without failing, a break here.
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${NEWEST_VENV:-$(mktemp -d)/venv}"
log="$(dirname "$venv")/newest.log"
python3 -m venv "$venv" && "$venv/bin/pip" install -q -U numpy onnx onnxruntime ml_dtypes pytest pytest-xdist >"$log" 2>&1
if [ $? -ne 0 ]; then echo "newest-versions check: install failed (see $log)"; exit 2; fi
versions=$("$venv/bin/python" -c "import numpy, onnx, onnxruntime, ml_dtypes; print(f'numpy {numpy.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, ml_dtypes {ml_dtypes.__version__}')")
"$venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 --confcutdir=tests/runtime tests/runtime >>"$log" 2>&1
rc=$?
summary=$(grep -E "passed|failed|error" "$log" | tail -1)
if [ $rc -eq 0 ]; then state=ok; else state="FAILED (see $log)"; grep -E "^(FAILED|ERROR)" "$log" | head -20; fi
echo "newest-versions check: $state with $versions: ${summary//=/}"
exit $rc
