# Two commands do everything:  make repro  (the whole study)  and  make test  (the test suite).
# While editing, make test-fast runs the unit tier (no notebooks, pipeline, distributed runs or kernels).
# Both create or reuse the virtual environment .venv inside the repository.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: setup test test-fast repro quick bench-loss bench-import lab clean-venv

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[study,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

setup: $(VENV)/.installed  ## create or update .venv

test: setup  ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: setup  ## the unit tier: every test not marked integration (under 2 minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not integration"

repro: setup  ## run the whole study with DVC (results land in results/)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The quick profile: every stage of the study at toy size (params overridden with -S), as a temporary
# DVC experiment: results/ stays untouched; `dvc exp show` lists it, `dvc exp apply NAME` brings it in.
# Its targets are the report (and so every stage it reads) and the supervised reference; the
# benchmark stages measure this machine rather than the study, and the tests run each in its quick
# form. --force runs every stage afresh rather than restoring directories from the run cache, which a
# temporary experiment may not hold.
QUICK := -S data_pretrain.clips=200 -S data_eval.clips=200 -S train.epochs=1 -S train.dim=32 \
	-S train.width=0.5 -S train.val_points=1 -S train.warmup_samples=0 -S 'study.seeds=[0]' \
	-S 'study.runs.headline=[{batch_size:8,losses:[coarse,max,attention]}]' \
	-S 'study.runs.variants=[{batch_size:8,losses:[mean,attention_floor,attention_gate,attention_uniform]}]' \
	-S study.workers=1 -S sweep.epochs=1 -S sweep.workers=1 \
	-S 'temperature.attn_temperatures=[0.1]' -S 'temperature.weight_temperatures=[1.0]' \
	-S 'temperature.learnable_from=[]' -S 'lr.runs=[{batch_size:8,losses:[coarse]}]' -S 'lr.factors=[1.0]' \
	-S 'noise.losses=[coarse]' -S 'noise.knobs.distractors=[0]' -S 'noise.knobs.filler_words=[0.3]' \
	-S 'noise.knobs.misaligned_frames=[0.25]' -S 'noise.knobs.mismatched_narration=[0.1]' -S 'width.losses=[coarse]' \
	-S 'width.widths=[0.5]' -S attention.clips=1 \
	-S supervised.samples=64 -S supervised.batch_size=32 -S supervised.eval_every=64 \
	-S 'supervised.digit_data=[eval]' -S 'supervised.digit_poolings=[max]' -S 'supervised.reference=[]' \
	-S 'regime.runs=[{batch_size:8,losses:[coarse]},{batch_size:16,losses:[coarse]}]' -S 'regime.budgets=[1]' \
	-S 'regime.seeds=[0]' -S regime.workers=1 -S regime.train.val_points=1 -S regime.choice.budget=1 \
	-S 'regime.choice.large=[coarse,16]' -S 'regime.choice.headline=[[coarse,8],[coarse,16]]' \
	-S 'replication.runs=[{batch_size:8,losses:[coarse,attention]}]' -S 'replication.seeds=[0]' \
	-S replication.workers=1 -S 'replication.pairs=[[[attention,8],[coarse,8]]]' \
	-S 'down_weighting.weight_temperatures=[1.0]' -S 'down_weighting.seeds=[0]' -S down_weighting.workers=1 \
	-S convergence.factor=2 -S 'convergence.runs=[{batch_size:8,losses:[coarse]}]' -S 'convergence.seeds=[0]' \
	-S convergence.workers=1

QUICK_TARGETS := report supervised_digit supervised_reference

quick: setup  ## the study's whole pipeline at toy size, in a temporary experiment (results/ untouched)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp run --temp --force $(QUICK) $(QUICK_TARGETS)

bench-loss: setup  ## time and memory of the loss backends on this machine
	$(BIN)/fgmm bench-loss --cpu-sweep --out results/bench

bench-import: setup  ## import throughput (1 and 2 workers) and batch reading speed of imported data
	$(BIN)/fgmm bench-import --out results/bench

lab: setup  ## open the notebooks in JupyterLab
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
