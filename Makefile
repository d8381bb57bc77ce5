# make demo / make test on a fresh clone: both create .venv and install what they need first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo lint typecheck clean

# torch goes in first, pinned: anything that asks for an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml constraints.txt scripts/patch_tensorrt_stubs.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[export,ort,trt-rtx,bench,serve,ray,dev]'
	$(PIP) install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	$(PY) scripts/patch_tensorrt_stubs.py
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The edit loop (1-2 minutes on two cores): everything that needs no exported model (docs/design.md, "Tests").
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not export and not slow"

demo: $(STAMP)
	$(PY) cli.py export --model shapes --out packages/shapes
	$(PY) cli.py build-ort --package packages/shapes
	$(PY) cli.py build-trt --package packages/shapes --fp16 --backend trt-rtx --arch sm86,sm89
	$(PY) cli.py generate --package packages/shapes --prompt "a large red star on a blue background, center" \
		--steps 20 --guidance 2 --seed 42 --out demo-out/star.png --overwrite
	$(PY) cli.py generate --package packages/shapes --prompt "a large yellow triangle on a purple background, top left" \
		--seed 42 --grid steps=2,5,10,20 --grid guidance=1,1.5,2,3 --out demo-out/grid.png --overwrite
	$(PY) scripts/make_mask.py demo-out/mask.png --size 64x64 --disc 0.5,0.5,0.3 --overwrite
	$(PY) cli.py generate --package packages/shapes --prompt "a large green star on a blue background, center" \
		--image demo-out/star.png --strength 0.7 --steps 20 --guidance 2 --seed 7 --out demo-out/star-img2img.png --overwrite
	$(PY) cli.py generate --package packages/shapes --prompt "a large white circle on a blue background, center" \
		--image demo-out/star.png --mask demo-out/mask.png --steps 20 --guidance 2 --seed 7 --out demo-out/star-inpaint.png --overwrite
	$(PY) cli.py generate --package packages/shapes --prompt "a large green star on a blue background, center" \
		--image demo-out/star.png --steps 20 --guidance 2 --seed 7 --grid strength=0.2,0.4,0.6,0.8 \
		--out demo-out/strength-grid.png --overwrite
	$(PY) cli.py quality --package packages/shapes --out demo-out/quality

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy diffship scripts cli.py

clean:
	rm -rf $(VENV) packages demo-out .pytest_cache .mypy_cache
