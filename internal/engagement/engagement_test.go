package engagement

import (
	"testing"
	"time"
)

func TestMachineRules(t *testing.T) {
	const browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
	opens := []struct {
		ua      string
		since   time.Duration
		machine bool
	}{
		{browser, 5 * time.Second, false},
		{"Mozilla/5.0", 20 * time.Second, true}, // Apple's privacy proxy prefetch
		{"Mozilla/5.0", 2 * time.Hour, false},   // the same bare agent much later: a person
		{"YahooMailProxy; https://help.yahoo.com", time.Hour, true},
	}
	for _, c := range opens {
		if got := openVerdict(c.ua).machineAfter(c.since); got != c.machine {
			t.Errorf("open %q after %s: machine=%v, want %v", c.ua, c.since, got, c.machine)
		}
	}
	clicks := []struct {
		ua      string
		since   time.Duration
		machine bool
	}{
		{browser, time.Minute, false},
		{browser, 3 * time.Second, true}, // followed on delivery: a scanner
		{"Mozilla/5.0 (compatible; Barracuda Sentinel)", time.Hour, true},
		{"curl/8.5.0", time.Hour, true},
		{browser, -1, false}, // unknown send time
	}
	for _, c := range clicks {
		if got := clickVerdict(c.ua).machineAfter(c.since); got != c.machine {
			t.Errorf("click %q after %s: machine=%v, want %v", c.ua, c.since, got, c.machine)
		}
	}
}
