package config

import (
	"strings"
	"testing"
)

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(map[string]string{})
	if err != nil {
		t.Fatalf("defaults must validate: %v", err)
	}
	if cfg.DatabaseURL != "postgres://postgres@127.0.0.1:5432/tend?sslmode=disable" || cfg.HTTPAddr != ":8080" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if len(cfg.Warnings()) == 0 {
		t.Fatal("the development secret must be warned about")
	}
}

func TestLoadReportsEveryBadVariable(t *testing.T) {
	_, err := Load(map[string]string{
		"TEND_DATABASE_URL": "mysql://x",
		"TEND_SECRET":       "short",
		"TEND_LOG_LEVEL":    "loud",
	})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, name := range []string{"TEND_DATABASE_URL", "TEND_SECRET", "TEND_LOG_LEVEL"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func TestLoadRejectsUnparsable(t *testing.T) {
	if _, err := Load(map[string]string{"TEND_WORKER_CONCURRENCY": "many"}); err == nil || !strings.Contains(err.Error(), "TEND_WORKER_CONCURRENCY") {
		t.Fatalf("want an error naming the variable, got %v", err)
	}
}
