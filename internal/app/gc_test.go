package app_test

import (
	"runtime/debug"
	"testing"

	"github.com/tendhq/tend/internal/app"
)

func TestTuneGCSetsTheDefaultUnlessGOGCIsSet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	restore := app.TuneGC()
	if got := debug.SetGCPercent(app.DefaultGCPercent); got != app.DefaultGCPercent {
		t.Fatalf("GC percent after TuneGC = %d, want %d", got, app.DefaultGCPercent)
	}
	restore()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GC percent after restore = %d, want the previous 100", got)
	}

	t.Setenv("GOGC", "50")
	debug.SetGCPercent(50) // what the runtime read from GOGC at start
	app.TuneGC()()
	if got := debug.SetGCPercent(100); got != 50 {
		t.Fatalf("GC percent with GOGC=50 set = %d, want 50 left alone", got)
	}
}
