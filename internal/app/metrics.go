package app

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/httpapi"
	"github.com/tendhq/tend/internal/segment"
)

// pendingLimit caps the count of accounts waiting for evaluation.
const pendingLimit = 1_000_000

// pipeline reports the state of the loop, read from PostgreSQL at each
// scrape: every process reports the same values (aggregate them with max,
// not sum). A scrape that cannot read them reports tend_pipeline_up 0.
type pipeline struct {
	outbox *delivery.Outbox
	engine *segment.Engine
	log    *slog.Logger

	up, oldestDue, inFlight, uncertain, pending *prometheus.Desc
}

func newPipeline(outbox *delivery.Outbox, engine *segment.Engine, log *slog.Logger) *pipeline {
	return &pipeline{outbox: outbox, engine: engine, log: log,
		up: prometheus.NewDesc("tend_pipeline_up", "Whether the pipeline gauges below could be read from PostgreSQL.", nil, nil),
		oldestDue: prometheus.NewDesc("tend_outbox_oldest_due_seconds",
			"How long the oldest message that may be sent now (due, campaign active, no hold) has waited past its due time; 0 when none waits.", nil, nil),
		inFlight:  prometheus.NewDesc("tend_outbox_in_flight_messages", "Messages claimed by a worker or being handed to SMTP.", nil, nil),
		uncertain: prometheus.NewDesc("tend_outbox_uncertain_messages", "Messages an operator must resend or drop (GET /v1/messages?status=uncertain).", nil, nil),
		pending: prometheus.NewDesc("tend_segment_pending_accounts",
			"Accounts whose data changed and whose segments are not re-evaluated yet (counted up to 1,000,000).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (p *pipeline) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{p.up, p.oldestDue, p.inFlight, p.uncertain, p.pending} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (p *pipeline) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := p.outbox.Gauges(ctx)
	var pending int64
	if err == nil {
		pending, err = p.engine.Pending(ctx, pendingLimit)
	}
	if err != nil {
		p.log.Warn("metrics: the pipeline gauges could not be read", "err", err)
		ch <- prometheus.MustNewConstMetric(p.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(p.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(p.oldestDue, prometheus.GaugeValue, g.OldestDue.Seconds())
	ch <- prometheus.MustNewConstMetric(p.inFlight, prometheus.GaugeValue, float64(g.InFlight))
	ch <- prometheus.MustNewConstMetric(p.uncertain, prometheus.GaugeValue, float64(g.Uncertain))
	ch <- prometheus.MustNewConstMetric(p.pending, prometheus.GaugeValue, float64(pending))
}

// serveMetrics serves /metrics and /healthz on addr until ctx ends: what
// `tend worker` (which has no API) offers a scraper and an orchestrator.
func (a *App) serveMetrics(ctx context.Context, addr string) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	return httpapi.ListenAndServe(ctx, addr, mux, a.Cfg.ShutdownTimeout, a.Log)
}
