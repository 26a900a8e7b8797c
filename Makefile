# The commands people run; README.md documents each.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CONFIG ?= configs/smoke.yaml
OUT    ?=
SET    ?=

# make study / make ui (docs/study.md)
PRESET   ?=
DATASET  ?= synthetic
MODEL    ?=
TRIALS   ?=
EPOCHS   ?=
STUDY    ?=
DATA     ?=
SEED     ?=
RUNS_DIR ?= runs
WORKERS  ?=
GPUS     ?=
WORKERS_PER_GPU ?=
SHARE    ?=
SNAPSHOT_GB ?=
PORT     ?= 5000
# several machines (README, docs/study.md): the stores' URLs travel in the environment, never in a printed command
STORAGE  ?=
TRACKING ?=
DB       ?=
ARTIFACTS ?=
HOST     ?= 127.0.0.1
MLFLOW_PORT ?= 5001
ALLOWED_HOSTS ?=
CORS_ORIGINS ?=
AUTH     ?=
AUTH_DB  ?=
ifneq ($(STORAGE),)
export ADPRUNE_STORAGE := $(STORAGE)
endif
ifneq ($(TRACKING),)
export ADPRUNE_TRACKING := $(TRACKING)
endif
ifneq ($(DB),)
export ADPRUNE_MLFLOW_BACKEND := $(DB)
endif

# make control / make controls (docs/pick.md)
KINDS    ?=
SEEDS    ?=
ALL_KINDS := scratch,uniform,random,repeat
comma    := ,
# make cpu-study (docs/reproduction.md)
CPU_STUDIES ?= cifar10jpeg-cpu-vgg19 cifar10jpeg-cpu-resnet18

.PHONY: install test test-slow lint train study worker mlflow-server ui report pick control controls cpu-study bench \
	bench-study snapshots snapshots-clean clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install  ## the fast CPU suite (about 5 minutes on 2 cores)
	$(PY) -m ruff check adprune_core study reports tests
	$(PY) -m pytest -q

test-slow: install  ## every test, the ones marked slow included
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m ruff check adprune_core study reports tests

train: install  ## make train [CONFIG=configs/smoke.yaml] [OUT=dir] [SET="train.epochs=3 data.name=cifar10"]
	$(VENV)/bin/adprune train --config $(CONFIG) $(if $(OUT),--out $(OUT)) $(foreach s,$(SET),--set $(s))

study: install  ## make study [PRESET=configs/study/x.yaml | DATASET=synthetic|cifar10|cifar100|tinyimagenet|imagefolder MODEL=vgg19|resnet18] [TRIALS=N] [EPOCHS=E] [STUDY=name] [DATA=path] [SEED=s] [RUNS_DIR=runs] [WORKERS=k | GPUS=0,1 WORKERS_PER_GPU=k] [STORAGE=url TRACKING=uri] [SHARE=0] [SNAPSHOT_GB=g]
	$(VENV)/bin/adprune study --dataset $(DATASET) --runs-dir $(RUNS_DIR) $(if $(PRESET),--config $(PRESET)) $(if $(MODEL),--model $(MODEL)) \
		$(if $(TRIALS),--trials $(TRIALS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(STUDY),--name $(STUDY)) \
		$(if $(DATA),--data $(DATA)) $(if $(SEED),--seed $(SEED)) $(foreach s,$(SET),--set $(s)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(GPUS),--gpus $(GPUS)) \
		$(if $(WORKERS_PER_GPU),--workers-per-gpu $(WORKERS_PER_GPU)) \
		$(if $(filter 0,$(SHARE)),--no-share) $(if $(SNAPSHOT_GB),--snapshot-gb $(SNAPSHOT_GB))

worker: install  ## make worker STUDY=name [STORAGE=url] [TRACKING=uri] [TRIALS=n] [DATA=path] [SET=...]: join a running study from this machine
	$(VENV)/bin/adprune worker --study "$(STUDY)" --runs-dir $(RUNS_DIR) $(if $(TRIALS),--trials $(TRIALS)) \
		$(if $(DATA),--data $(DATA)) $(foreach s,$(SET),--set $(s)) $(if $(filter 0,$(SHARE)),--no-share)

mlflow-server: install  ## make mlflow-server [DB=postgresql://...] [ARTIFACTS=dir] [HOST=127.0.0.1] [MLFLOW_PORT=5001] [ALLOWED_HOSTS=name,...] [CORS_ORIGINS=url,...] [AUTH=1 [AUTH_DB=url]]: a tracking server for several machines
	$(VENV)/bin/adprune mlflow-server --runs-dir $(RUNS_DIR) --host $(HOST) --port $(MLFLOW_PORT) \
		$(if $(ARTIFACTS),--artifacts $(ARTIFACTS)) $(if $(ALLOWED_HOSTS),--allowed-hosts "$(ALLOWED_HOSTS)") \
		$(if $(CORS_ORIGINS),--cors-origins "$(CORS_ORIGINS)") $(if $(AUTH),--auth) $(if $(AUTH_DB),--auth-db "$(AUTH_DB)")

ui: install  ## the MLflow UI for $(RUNS_DIR) on http://127.0.0.1:$(PORT)
	$(VENV)/bin/adprune ui --runs-dir $(RUNS_DIR) --port $(PORT)

report: install  ## make report [STUDY=name] [RUNS_DIR=runs]: runs/reports/<study>/{index.html,summary.md,trials.csv,pareto.csv}
	$(VENV)/bin/adprune report --runs-dir $(RUNS_DIR) $(if $(STUDY),--study $(STUDY))

pick: install  ## make pick STUDY=name (TRIAL=n | KNEE=1) [OUT=dir]: register and export one trial's pruned network
	$(VENV)/bin/adprune pick --runs-dir $(RUNS_DIR) $(if $(STUDY),--study $(STUDY)) $(if $(TRIAL),--trial $(TRIAL)) \
		$(if $(KNEE),--knee) $(if $(OUT),--out $(OUT))

control: install  ## make control STUDY=name TRIAL=n [UNIFORM=1] [KINDS=scratch,uniform,random,repeat] [SEEDS=k]: a trial's controls
	$(VENV)/bin/adprune control --runs-dir $(RUNS_DIR) $(if $(STUDY),--study $(STUDY)) $(if $(TRIAL),--trial $(TRIAL)) \
		$(if $(UNIFORM),--uniform) $(if $(KINDS),--kinds $(KINDS)) $(if $(SEEDS),--seeds $(SEEDS))

controls: install  ## make controls STUDY=name [SEEDS=3] [KINDS=scratch,uniform,random,repeat] [TRIAL=n,m | KNEE=1]: the controls of the picks (default: the picked trials) over seeds; resumable
	$(VENV)/bin/adprune control --runs-dir $(RUNS_DIR) $(if $(STUDY),--study $(STUDY)) \
		$(if $(TRIAL),$(foreach t,$(subst $(comma), ,$(TRIAL)),--trial $(t)),$(if $(KNEE),--knee,--picks)) \
		--kinds $(or $(KINDS),$(ALL_KINDS)) --seeds $(or $(SEEDS),3)

cpu-study: install  ## make cpu-study [TRIALS=12] [SEEDS=3] [CPU_STUDIES="cifar10jpeg-cpu-vgg19 ..."]: the real-data CPU studies, their controls and reports (docs/reproduction.md)
	set -e; for s in $(CPU_STUDIES); do \
		$(MAKE) --no-print-directory study PRESET=configs/study/$$s.yaml TRIALS=$(or $(TRIALS),12); \
		$(MAKE) --no-print-directory controls STUDY=$$s KNEE=1 SEEDS=$(or $(SEEDS),3); \
		$(MAKE) --no-print-directory report STUDY=$$s; \
	done

bench: install  ## side-by-side speed figures, written to docs/benchmarks.md
	$(PY) -m adprune_core.bench --out docs/benchmarks.md

bench-study: install  ## the same seeded study with SHARE=0 and with shared prefixes, side by side, into docs/benchmarks.md
	$(PY) -m study.bench --out docs/benchmarks.md

snapshots: install  ## list the epoch snapshots shared prefixes use (RUNS_DIR=runs)
	$(VENV)/bin/adprune snapshots --runs-dir $(RUNS_DIR)

snapshots-clean: install  ## delete every epoch snapshot of RUNS_DIR (studies then train their prefixes again)
	$(VENV)/bin/adprune snapshots --runs-dir $(RUNS_DIR) --remove

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
