package jobs

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tendhq/tend/internal/delivery"
)

// Metrics are the worker's counters.
type Metrics struct {
	messages *prometheus.CounterVec
}

// NewMetrics registers the worker's counters with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{messages: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tend_messages_total",
		Help: "Outbox messages this process settled, by outcome: sent, delivered (nudges), failed, skipped, uncertain, or retry and deferred (scheduled again).",
	}, []string{"outcome"})}
	reg.MustRegister(m.messages)
	return m
}

// sent counts what a send batch did; a nil Metrics counts nothing.
func (m *Metrics) sent(s delivery.Sent) {
	if m == nil {
		return
	}
	for outcome, n := range s.Outcomes {
		m.messages.WithLabelValues(outcome).Add(float64(n))
	}
}
