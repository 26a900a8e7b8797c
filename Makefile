# The commands people run; README.md documents each.
# Every variable reaches the shell as one single-quoted word, $(call q,...), whatever it holds:
# make study 'STUDY=x;touch pwned' names a study "x;touch pwned" and runs nothing else.
q = '$(subst ','\'',$(1))'
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
	test -x $(call q,$(PY)) || $(call q,$(PYTHON)) -m venv $(call q,$(VENV))
	$(call q,$(PY)) -m pip install --quiet --upgrade pip
	$(call q,$(PY)) -m pip install --quiet -e '.[test]'
	touch $(call q,$(STAMP))

test: install  ## the fast CPU suite (about 5 minutes on 2 cores)
	$(call q,$(PY)) -m ruff check adprune_core study reports tests
	$(call q,$(PY)) -m pytest -q

test-slow: install  ## every test, the ones marked slow included
	$(call q,$(PY)) -m pytest -q -m "slow or not slow"

lint: install
	$(call q,$(PY)) -m ruff check adprune_core study reports tests

train: install  ## make train [CONFIG=configs/smoke.yaml] [OUT=dir] [SET="train.epochs=3 data.name=cifar10"]
	$(call q,$(VENV)/bin/adprune) train --config $(call q,$(CONFIG)) $(if $(OUT),--out $(call q,$(OUT))) \
		$(foreach s,$(SET),--set $(call q,$(s)))

study: install  ## make study [PRESET=configs/study/x.yaml | DATASET=synthetic|cifar10|cifar100|tinyimagenet|imagefolder MODEL=vgg19|resnet18] [TRIALS=N] [EPOCHS=E] [STUDY=name] [DATA=path] [SEED=s] [RUNS_DIR=runs] [WORKERS=k | GPUS=0,1 WORKERS_PER_GPU=k] [STORAGE=url TRACKING=uri] [SHARE=0] [SNAPSHOT_GB=g]
	$(call q,$(VENV)/bin/adprune) study --dataset $(call q,$(DATASET)) --runs-dir $(call q,$(RUNS_DIR)) \
		$(if $(PRESET),--config $(call q,$(PRESET))) $(if $(MODEL),--model $(call q,$(MODEL))) \
		$(if $(TRIALS),--trials $(call q,$(TRIALS))) \
		$(if $(EPOCHS),--epochs $(call q,$(EPOCHS))) $(if $(STUDY),--name $(call q,$(STUDY))) \
		$(if $(DATA),--data $(call q,$(DATA))) $(if $(SEED),--seed $(call q,$(SEED))) \
		$(foreach s,$(SET),--set $(call q,$(s))) $(if $(WORKERS),--workers $(call q,$(WORKERS))) \
		$(if $(GPUS),--gpus $(call q,$(GPUS))) $(if $(WORKERS_PER_GPU),--workers-per-gpu $(call q,$(WORKERS_PER_GPU))) \
		$(if $(filter 0,$(SHARE)),--no-share) $(if $(SNAPSHOT_GB),--snapshot-gb $(call q,$(SNAPSHOT_GB)))

worker: install  ## make worker STUDY=name [STORAGE=url] [TRACKING=uri] [TRIALS=n] [DATA=path] [SET=...]: join a running study from this machine
	$(call q,$(VENV)/bin/adprune) worker --study $(call q,$(STUDY)) --runs-dir $(call q,$(RUNS_DIR)) \
		$(if $(TRIALS),--trials $(call q,$(TRIALS))) $(if $(DATA),--data $(call q,$(DATA))) \
		$(foreach s,$(SET),--set $(call q,$(s))) $(if $(filter 0,$(SHARE)),--no-share)

mlflow-server: install  ## make mlflow-server [DB=postgresql://...] [ARTIFACTS=dir] [HOST=127.0.0.1] [MLFLOW_PORT=5001] [ALLOWED_HOSTS=name,...] [CORS_ORIGINS=url,...] [AUTH=1 [AUTH_DB=url]]: a tracking server for several machines
	$(call q,$(VENV)/bin/adprune) mlflow-server --runs-dir $(call q,$(RUNS_DIR)) --host $(call q,$(HOST)) \
		--port $(call q,$(MLFLOW_PORT)) $(if $(ARTIFACTS),--artifacts $(call q,$(ARTIFACTS))) \
		$(if $(ALLOWED_HOSTS),--allowed-hosts $(call q,$(ALLOWED_HOSTS))) \
		$(if $(CORS_ORIGINS),--cors-origins $(call q,$(CORS_ORIGINS))) $(if $(AUTH),--auth) \
		$(if $(AUTH_DB),--auth-db $(call q,$(AUTH_DB)))

ui: install  ## the MLflow UI for $(RUNS_DIR) on http://127.0.0.1:$(PORT)
	$(call q,$(VENV)/bin/adprune) ui --runs-dir $(call q,$(RUNS_DIR)) --port $(call q,$(PORT))

report: install  ## make report [STUDY=name] [RUNS_DIR=runs]: runs/reports/<study>/{index.html,summary.md,trials.csv,pareto.csv}
	$(call q,$(VENV)/bin/adprune) report --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY)))

pick: install  ## make pick STUDY=name (TRIAL=n | KNEE=1) [OUT=dir]: register and export one trial's pruned network
	$(call q,$(VENV)/bin/adprune) pick --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY))) \
		$(if $(TRIAL),--trial $(call q,$(TRIAL))) $(if $(KNEE),--knee) $(if $(OUT),--out $(call q,$(OUT)))

control: install  ## make control STUDY=name TRIAL=n [UNIFORM=1] [KINDS=scratch,uniform,random,repeat] [SEEDS=k]: a trial's controls
	$(call q,$(VENV)/bin/adprune) control --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY))) \
		$(if $(TRIAL),--trial $(call q,$(TRIAL))) $(if $(UNIFORM),--uniform) $(if $(KINDS),--kinds $(call q,$(KINDS))) \
		$(if $(SEEDS),--seeds $(call q,$(SEEDS)))

controls: install  ## make controls STUDY=name [SEEDS=3] [KINDS=scratch,uniform,random,repeat] [TRIAL=n,m | KNEE=1]: the controls of the picks (default: the picked trials) over seeds; resumable
	$(call q,$(VENV)/bin/adprune) control --runs-dir $(call q,$(RUNS_DIR)) $(if $(STUDY),--study $(call q,$(STUDY))) \
		$(if $(TRIAL),$(foreach t,$(subst $(comma), ,$(TRIAL)),--trial $(call q,$(t))),$(if $(KNEE),--knee,--picks)) \
		--kinds $(call q,$(or $(KINDS),$(ALL_KINDS))) --seeds $(call q,$(or $(SEEDS),3))

cpu-study: install  ## make cpu-study [TRIALS=12] [SEEDS=3] [CPU_STUDIES="cifar10jpeg-cpu-vgg19 ..."]: the real-data CPU studies, their controls and reports (docs/reproduction.md)
	set -e; for s in $(CPU_STUDIES); do \
		$(MAKE) --no-print-directory study PRESET=configs/study/$$s.yaml TRIALS=$(call q,$(or $(TRIALS),12)); \
		$(MAKE) --no-print-directory controls STUDY=$$s KNEE=1 SEEDS=$(call q,$(or $(SEEDS),3)); \
		$(MAKE) --no-print-directory report STUDY=$$s; \
	done

bench: install  ## side-by-side speed figures, written to docs/benchmarks.md
	$(call q,$(PY)) -m adprune_core.bench --out docs/benchmarks.md

bench-study: install  ## the same seeded study with SHARE=0 and with shared prefixes, side by side, into docs/benchmarks.md
	$(call q,$(PY)) -m study.bench --out docs/benchmarks.md

snapshots: install  ## list the epoch snapshots shared prefixes use (RUNS_DIR=runs)
	$(call q,$(VENV)/bin/adprune) snapshots --runs-dir $(call q,$(RUNS_DIR))

snapshots-clean: install  ## delete every epoch snapshot of RUNS_DIR (studies then train their prefixes again)
	$(call q,$(VENV)/bin/adprune) snapshots --runs-dir $(call q,$(RUNS_DIR)) --remove

clean:
	rm -rf $(call q,$(VENV)) build *.egg-info .pytest_cache .ruff_cache
