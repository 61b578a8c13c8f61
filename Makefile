SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Tools installed with `go install` (mailpit) live here; make them visible to recipes.
GOBIN_DIR := $(or $(shell go env GOBIN 2>/dev/null),$(firstword $(subst :, ,$(shell go env GOPATH 2>/dev/null)))/bin)
export PATH := $(GOBIN_DIR):$(PATH)

# -race needs cgo (a C compiler); go env reports CGO_ENABLED=0 when none is found.
RACE := $(if $(filter 1,$(shell go env CGO_ENABLED 2>/dev/null)),-race,)
TESTFLAGS ?= $(RACE) -count=1 -timeout 15m
BENCH ?= .
BENCHFLAGS ?= -benchtime 1x -timeout 60m
PKGS ?= ./...
GOFILES = find . -name '*.go' -not -path './vendor/*' -not -path './.git/*' -not -path '*/testdata/*' -print0

.PHONY: help services build run test bench lint fmt tidy clean

help: ## list targets
	@echo "usage: make <target>"
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

services: ## start PostgreSQL, Redis and mailpit locally (deploy/services.sh)
	deploy/services.sh

build: ## build bin/tend
	go build -o bin/tend ./cmd/tend

run: services build ## migrate, seed demo data, apply campaigns/, run tend all
	deploy/run-local.sh

test: ## run the tests (TESTFLAGS='...' to override, PKGS=./internal/... to narrow)
	deploy/services.sh --smtp-optional
	go test $(TESTFLAGS) $(PKGS)

bench: services ## run the benchmarks once each (BENCH=pattern to pick)
	go test -run '^$$' -bench '$(BENCH)' $(BENCHFLAGS) $(PKGS)
	@echo "note: benchmark results are figures to read, not assertions; nothing above fails on a slow number."

lint: ## gofmt check, go vet and staticcheck
	@out="$$($(GOFILES) | xargs -0 -r gofmt -l)"; \
	if [[ -n "$$out" ]]; then echo "gofmt: these files need formatting (run make fmt):"; echo "$$out"; exit 1; fi
	go vet $(PKGS)
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

fmt: ## format the Go code
	$(GOFILES) | xargs -0 -r gofmt -w

tidy: ## go mod tidy
	go mod tidy

clean: ## remove build output and test caches
	rm -rf bin coverage.* *.out *.test
	go clean -testcache
