# Sourced by the GPU-machine scripts (train_parallel.sh, pretrain_gpu.sh): the checkout made
# importable as `seismag` under $W, the machine described, and the training regimes synthesised
# into $W/data (`seismag synth --events $EVENTS --seed 1 --regimes $REGIMES`, docs/data.md;
# REGIMES defaults to `train`). Needs PY, EVENTS, WORKERS, W and T0 set; exits 3 without torch,
# 4 when synthesis fails.
mkdir -p "$W/pkg" "$W/runs"
ln -sfn "$PWD" "$W/pkg/seismag"  # the checkout is the seismag package
export PYTHONPATH=$W/pkg:${EXTRA_PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
echo "cores: $(nproc)"
$PY -c "import torch, numpy, scipy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'scipy', scipy.__version__)" || exit 3
$PY -m seismag synth --out "$W/data" --events "$EVENTS" --seed 1 --regimes "${REGIMES:-train}" \
    --workers "$WORKERS" > "$W/synth.log" 2>&1 || { tail -20 "$W/synth.log"; exit 4; }
md5sum "$W/data/metadata.csv"
echo "synth done at $(( $(date +%s) - T0 )) s"
