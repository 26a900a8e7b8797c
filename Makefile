# The commands people run; README.md documents each, `make help` lists them with their variables.
# Every variable reaches the shell as one single-quoted word, $(call q,...), whatever it holds:
# make study 'STUDY=x;touch pwned' names a study "x;touch pwned" and runs nothing else.
# Each command is built in a variable (a backslash-newline there is one space), so make echoes it as one line.
q = '$(subst ','\'',$(1))'
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ADPRUNE := $(call q,$(VENV)/bin/adprune)
STAMP  := $(VENV)/.installed
comma  := ,

#: CONFIG=file      make train: the trainer preset (default configs/smoke.yaml)
#: OUT=dir          make train: output folder; make pick: export folder
#: SET="k=v ..."    trainer config overrides (make train, study, worker)
#: TORCH=cpu        make install: the CPU-only torch build (about 1 GB instead of 6.4 GB); start from make clean
#: PRESET=file      make study: a study file (configs/study/*.yaml) instead of DATASET and MODEL
#: DATASET=name     make study: synthetic (default), cifar10, cifar100, tinyimagenet or imagefolder
#: MODEL=name       make study: vgg19 or resnet18 (the dataset's preset picks one when unset)
#: TRIALS=N         trials in the study, the baseline included (make worker: trials this worker runs)
#: EPOCHS=E         epochs per trial
#: STUDY=name       the study (default: the preset's name)
#: DATA=path        where the dataset lives (data.root)
#: SEED=s           the sampler's and the trainer's seed
#: RUNS_DIR=dir     the runtime folder: stores, trials, reports (default runs)
#: WORKERS=k        processes that run trials on this machine
#: GPUS=0,1         one worker per GPU listed (WORKERS_PER_GPU=k for more)
#: SHARE=0          no shared prefixes: every trial trains from scratch
#: SNAPSHOT_GB=g    the size limit of the snapshot folder (default 10)
#: STORAGE=url      the Optuna storage of a study on several machines (postgresql://...)
#: TRACKING=uri     the MLflow tracking server of a study on several machines (http://host:5001)
#: PORT=n           make ui: the UI's port (default 5000)
#: DB=url           make mlflow-server: its database (default SQLite in RUNS_DIR)
#: ARTIFACTS=dir    make mlflow-server: the artifact folder it serves
#: HOST=addr        make mlflow-server: the address it listens on (default 127.0.0.1)
#: MLFLOW_PORT=n    make mlflow-server: its port (default 5001)
#: ALLOWED_HOSTS=.. make mlflow-server: more host names it answers to (name,...)
#: CORS_ORIGINS=..  make mlflow-server: more origins its UI may be used from (url,...)
#: AUTH=1           make mlflow-server: logins required (MLflow basic auth; AUTH_DB=url for its users)
#: TRIAL=n          make pick / control: the trial (make controls: n,m,...)
#: KNEE=1           make pick / controls: the knee of the feasible Pareto front
#: UNIFORM=1        make control: add the uniform-width control
#: KINDS=a,b        make control(s): scratch, uniform, random, repeat
#: SEEDS=k          make control(s): seeds per control (controls: default 3)
#: CPU_STUDIES=".." make cpu-study: which real-data CPU presets (default both)

CONFIG ?= configs/smoke.yaml
OUT    ?=
SET    ?=
TORCH  ?=
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
TRIAL    ?=
KNEE     ?=
UNIFORM  ?=
KINDS    ?=
SEEDS    ?=
ALL_KINDS := scratch,uniform,random,repeat
CPU_STUDIES ?= cifar10jpeg-cpu-vgg19 cifar10jpeg-cpu-resnet18
# PyTorch's own index of CPU-only wheels (make install TORCH=cpu)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: help install test test-slow lint train study worker mlflow-server ui report pick control controls cpu-study \
	bench bench-study snapshots snapshots-clean clean

.DEFAULT_GOAL := help

help:  ## this list: the targets and the variables they read :: make help
	@echo 'make <target> [VARIABLE=value ...]    (README.md; docs/ for the details)'
	@echo
	@awk 'BEGIN {FS = ":.*## | :: "} /^[a-z][a-z-]*:.*## / {printf "  %-16s %s\n  %-16s   %s\n", $$1, $$2, "", $$3}' $(MAKEFILE_LIST)
	@echo
	@echo 'variables:'
	@sed -n 's/^#: /  /p' $(MAKEFILE_LIST)

install: $(STAMP)  ## the virtual environment .venv with the project and its test tools :: make install [TORCH=cpu] [PYTHON=python3.12]

$(STAMP): pyproject.toml
	test -x $(call q,$(PY)) || $(call q,$(PYTHON)) -m venv $(call q,$(VENV))
	$(call q,$(PY)) -m pip install --quiet --upgrade pip
	$(if $(filter cpu,$(TORCH)),$(call q,$(PY)) -m pip install --quiet --index-url $(call q,$(TORCH_CPU_INDEX)) torch torchvision,@true)
	$(call q,$(PY)) -m pip install --quiet -e '.[all,test]'
	touch $(call q,$(STAMP))

test: install  ## lint, the import contracts, the core's type check and the fast CPU suite (13 minutes on 2 idle cores from a fresh clone, pytest 10 of them: docs/durations.md) :: make test
	$(call q,$(PY)) -m ruff check adprune adprune_core study reports followup tests
	$(call q,$(VENV)/bin/lint-imports)
	$(call q,$(PY)) -m mypy
	$(call q,$(PY)) -m pytest -q

test-slow: install  ## every test, the ones marked slow included :: make test-slow
	$(call q,$(PY)) -m pytest -q -m "slow or not slow"

lint: install  ## ruff over the packages and the tests, and the import contracts (pyproject.toml) :: make lint
	$(call q,$(PY)) -m ruff check adprune adprune_core study reports followup tests
	$(call q,$(VENV)/bin/lint-imports)

train_cmd = $(ADPRUNE) train --config $(call q,$(CONFIG)) $(if $(OUT),--out $(call q,$(OUT))) \
	$(foreach s,$(SET),--set $(call q,$(s)))
train: install  ## train one network with density pruning :: make train [CONFIG=configs/smoke.yaml] [OUT=dir] [SET="train.epochs=3 data.name=cifar10"]
	$(train_cmd)

study_cmd = $(ADPRUNE) study --dataset $(call q,$(DATASET)) --runs-dir $(call q,$(RUNS_DIR)) \
	$(if $(PRESET),--config $(call q,$(PRESET))) $(if $(MODEL),--model $(call q,$(MODEL))) \
	$(if $(TRIALS),--trials $(call q,$(TRIALS))) $(if $(EPOCHS),--epochs $(call q,$(EPOCHS))) \
	$(if $(STUDY),--name $(call q,$(STUDY))) $(if $(DATA),--data $(call q,$(DATA))) \
	$(if $(SEED),--seed $(call q,$(SEED))) $(foreach s,$(SET),--set $(call q,$(s))) \
	$(if $(WORKERS),--workers $(call q,$(WORKERS))) $(if $(GPUS),--gpus $(call q,$(GPUS))) \
	$(if $(WORKERS_PER_GPU),--workers-per-gpu $(call q,$(WORKERS_PER_GPU))) \
	$(if $(filter 0,$(SHARE)),--no-share) $(if $(SNAPSHOT_GB),--snapshot-gb $(call q,$(SNAPSHOT_GB)))
study: install  ## run or resume a study (SHARE=0: every trial from scratch) :: make study [PRESET=configs/study/x.yaml | DATASET=synthetic|cifar10|cifar100|tinyimagenet|imagefolder MODEL=vgg19|resnet18] [TRIALS=N] [EPOCHS=E] [STUDY=name] [DATA=path] [SEED=s] [RUNS_DIR=runs] [WORKERS=k | GPUS=0,1 WORKERS_PER_GPU=k] [STORAGE=url TRACKING=uri] [SHARE=0] [SNAPSHOT_GB=g]
	$(study_cmd)

worker_cmd = $(ADPRUNE) worker --study $(call q,$(STUDY)) --runs-dir $(call q,$(RUNS_DIR)) \
	$(if $(TRIALS),--trials $(call q,$(TRIALS))) $(if $(DATA),--data $(call q,$(DATA))) \
	$(foreach s,$(SET),--set $(call q,$(s))) $(if $(filter 0,$(SHARE)),--no-share)
worker: install  ## join a running study from this machine :: make worker STUDY=name [STORAGE=url] [TRACKING=uri] [TRIALS=n] [DATA=path] [SET=...]
	$(worker_cmd)

mlflow_server_cmd = $(ADPRUNE) mlflow-server --runs-dir $(call q,$(RUNS_DIR)) --host $(call q,$(HOST)) \
	--port $(call q,$(MLFLOW_PORT)) $(if $(ARTIFACTS),--artifacts $(call q,$(ARTIFACTS))) \
	$(if $(ALLOWED_HOSTS),--allowed-hosts $(call q,$(ALLOWED_HOSTS))) \
	$(if $(CORS_ORIGINS),--cors-origins $(call q,$(CORS_ORIGINS))) $(if $(AUTH),--auth) \
	$(if $(AUTH_DB),--auth-db $(call q,$(AUTH_DB)))
mlflow-server: install  ## a tracking server for several machines :: make mlflow-server [DB=postgresql://...] [ARTIFACTS=dir] [HOST=127.0.0.1] [MLFLOW_PORT=5001] [ALLOWED_HOSTS=name,...] [CORS_ORIGINS=url,...] [AUTH=1 [AUTH_DB=url]]
	$(mlflow_server_cmd)

ui: install  ## the MLflow UI for RUNS_DIR on http://127.0.0.1:PORT :: make ui [RUNS_DIR=runs] [PORT=5000]
	$(ADPRUNE) ui --runs-dir $(call q,$(RUNS_DIR)) --port $(call q,$(PORT))

report: install  ## the Pareto report: runs/reports/<study>/{index.html,summary.md,trials.csv,pareto.csv} :: make report [STUDY=name] [RUNS_DIR=runs]
	$(ADPRUNE) report --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY)))

pick_cmd = $(ADPRUNE) pick --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY))) \
	$(if $(TRIAL),--trial $(call q,$(TRIAL))) $(if $(KNEE),--knee) $(if $(OUT),--out $(call q,$(OUT)))
pick: install  ## register and export one trial's pruned network :: make pick STUDY=name (TRIAL=n | KNEE=1) [OUT=dir]
	$(pick_cmd)

control_cmd = $(ADPRUNE) control --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY))) \
	$(if $(TRIAL),--trial $(call q,$(TRIAL))) $(if $(UNIFORM),--uniform) $(if $(KINDS),--kinds $(call q,$(KINDS))) \
	$(if $(SEEDS),--seeds $(call q,$(SEEDS)))
control: install  ## a trial's controls: did pruning pay? :: make control STUDY=name TRIAL=n [UNIFORM=1] [KINDS=scratch,uniform,random,repeat] [SEEDS=k]
	$(control_cmd)

controls_cmd = $(ADPRUNE) control --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY))) \
	$(if $(TRIAL),$(foreach t,$(subst $(comma), ,$(TRIAL)),--trial $(call q,$(t))),$(if $(KNEE),--knee,--picks)) \
	--kinds $(call q,$(or $(KINDS),$(ALL_KINDS))) --seeds $(call q,$(or $(SEEDS),3))
controls: install  ## the controls of the picks (default: the picked trials) over seeds; resumable :: make controls STUDY=name [SEEDS=3] [KINDS=scratch,uniform,random,repeat] [TRIAL=n,m | KNEE=1]
	$(controls_cmd)

cpu-study: install  ## the real-data CPU studies, their controls and reports (docs/reproduction.md) :: make cpu-study [TRIALS=12] [SEEDS=3] [CPU_STUDIES="cifar10jpeg-cpu-vgg19 ..."] [DATA=path]
	set -e; for s in $(CPU_STUDIES); do \
		$(MAKE) --no-print-directory study PRESET=configs/study/$$s.yaml TRIALS=$(call q,$(or $(TRIALS),12)); \
		$(MAKE) --no-print-directory controls STUDY=$$s KNEE=1 SEEDS=$(call q,$(or $(SEEDS),3)); \
		$(MAKE) --no-print-directory report STUDY=$$s; \
	done

bench: install  ## side-by-side speed figures of the trainer, written to docs/benchmarks.md :: make bench
	$(call q,$(PY)) -m adprune_core.bench --out docs/benchmarks.md

bench-study: install  ## the same seeded study with SHARE=0 and with shared prefixes, side by side, into docs/benchmarks.md :: make bench-study
	$(call q,$(PY)) -m study.bench --out docs/benchmarks.md

snapshots: install  ## list the epoch snapshots shared prefixes use :: make snapshots [RUNS_DIR=runs]
	$(ADPRUNE) snapshots --runs-dir $(call q,$(RUNS_DIR))

snapshots-clean: install  ## delete every epoch snapshot (studies then train their prefixes again) :: make snapshots-clean [RUNS_DIR=runs]
	$(ADPRUNE) snapshots --runs-dir $(call q,$(RUNS_DIR)) --remove

clean:  ## remove .venv and build leftovers (runs/ is kept) :: make clean
	rm -rf $(call q,$(VENV)) build *.egg-info .pytest_cache .ruff_cache
