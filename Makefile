# Two entry points: `make demo` (sample corpus -> tokenize job -> verify -> train a small VAR -> sample ->
# report, on the embedded default tokenizer) and `make test` (the test suite). Both create .venv and
# install everything they need.
# torch is pinned through constraints.txt to the CPU build on disk; an unpinned install would
# resolve to a newer CUDA build of several GB.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scaletok-installed
DEMO_OUT ?= demo-out
export RAY_AUTH_MODE ?= disabled

.PHONY: install demo test browser bench test-gpu bench-gpu default-tokenizer clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scaletok demo --out $(DEMO_OUT)

test: $(STAMP) browser
	$(BIN)/python -m pytest tests

# The report's browser test renders report.html in headless Chromium (Debian's `chromium`).
# Installed here when missing and apt-get is there (as root, or with password-less sudo);
# elsewhere the test is skipped and says why.
browser:
	@test -x /usr/bin/chromium || command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  { SUDO=$$(test "$$(id -u)" = 0 || echo "sudo -n"); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } || \
	  echo "chromium could not be installed: the report's browser test will be skipped"

bench: $(STAMP)
	$(BIN)/python benchmarks/encode.py

# On a machine with a CUDA GPU: the GPU tests (nvJPEG decode, the job on the GPU, --batch-size auto
# against GPU memory) and the GPU benchmarks. PYTHON: an interpreter with CUDA torch (+ torchvision
# for nvJPEG) and this project's requirements; the CPU venv of `make install` has no CUDA.
PYTHON ?= $(BIN)/python
test-gpu:
	$(PYTHON) -m pytest -m gpu tests/gpu
bench-gpu:
	bash benchmarks/gpu.sh $(PYTHON)

# Reproduces pipeline/assets/default_tokenizer.* (the demo's embedded default): trains a small f8
# VAR multi-scale VQ-VAE (64 px, 155 tokens) on the offline photos with Ray Train, then exports it
# with its held-out PSNR. About an hour on a 2-core CPU box (one intra-op thread keeps its speed
# when other work shares the cores); rerunning resumes. Not part of demo/test.
DEFAULT_TOK_OUT ?= out/default-tokenizer
default-tokenizer: $(STAMP)
	$(BIN)/scaletok train-tokenizer --photos-dir $(DEFAULT_TOK_OUT)/photos --family var-vqvae \
	  --model-config ch=32 --model-config ch_mult=[2,2,4,4] --model-config num_res_blocks=1 \
	  --model-config vocab_size=1024 --model-config z_channels=16 --model-config v_patch_nums=[1,2,3,4,5,6,8] \
	  --crop-size 64 --min-scale 0.12 --batch-size 8 --max-steps 2000 --lr 2e-3 --warmup-steps 100 \
	  --min-lr-ratio 0.05 --quant-start 700 --restart-dead-codes 100 --pixel-loss l1 --l2-weight 1.0 \
	  --eval-crops 16 --eval-every 500 --ckpt-every 250 --log-every 25 --threads 1 --cpus-per-worker 1 \
	  --storage-path $(DEFAULT_TOK_OUT)/runs --name default
	$(BIN)/python -m pipeline.tokenizer_training.export_default $(DEFAULT_TOK_OUT)/runs/default --command "make default-tokenizer"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
