// Package jobs owns Tend's background work on asynq: task type names,
// constructors, handlers, and the lifecycle of the worker server and the
// periodic scheduler. Tasks are signals, not state: PostgreSQL holds what must
// be done, so a lost task delays work but never loses it.
package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
)

// Queues and their priorities: urgent work (real-time re-evaluation, sends)
// before bulk passes.
var queues = map[string]int{
	QueueCritical: 6,
	QueueDefault:  3,
	QueueBulk:     1,
}

// Queue names.
const (
	QueueCritical = "critical"
	QueueDefault  = "default"
	QueueBulk     = "bulk"
)

// Worker runs asynq handlers until stopped.
type Worker struct {
	srv *asynq.Server
	mux *asynq.ServeMux
	log *slog.Logger
}

// WorkerOptions tune a worker.
type WorkerOptions struct {
	Concurrency     int
	ShutdownTimeout time.Duration
}

// NewWorker builds a worker on the given Redis with the given handlers.
func NewWorker(redis asynq.RedisConnOpt, log *slog.Logger, opts WorkerOptions, register func(*asynq.ServeMux)) *Worker {
	mux := asynq.NewServeMux()
	if register != nil {
		register(mux)
	}
	srv := asynq.NewServer(redis, asynq.Config{
		Concurrency:     opts.Concurrency,
		Queues:          queues,
		ShutdownTimeout: opts.ShutdownTimeout,
		// Poll empty queues often: on-change re-evaluation should take
		// well under the 2 s target.
		TaskCheckInterval: 100 * time.Millisecond,
		Logger:            asynqLogger{log.With("component", "asynq")},
		ErrorHandler: asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			log.Warn("task failed", "type", t.Type(), "err", err)
		}),
	})
	return &Worker{srv: srv, mux: mux, log: log}
}

// Run processes tasks until ctx ends, then stops taking new tasks and waits
// (up to the shutdown timeout) for running ones to finish.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.srv.Start(w.mux); err != nil {
		return fmt.Errorf("jobs: start worker: %w", err)
	}
	w.log.Info("worker: started")
	<-ctx.Done()
	w.srv.Stop()     // stop pulling new tasks
	w.srv.Shutdown() // wait for active tasks, up to ShutdownTimeout
	w.log.Info("worker: stopped")
	return nil
}

// asynqLogger adapts slog to asynq's logger.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)) }
