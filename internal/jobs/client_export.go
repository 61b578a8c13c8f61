package jobs

import "context"

// StartFullPass enqueues a full pass (every live segment, every account)
// under key, as the scheduler does for its time buckets. A key names one
// pass: starting the same key again does not start a second one. Used by
// BenchmarkSegmentFullPass to run a pass through the worker pool on demand.
func (c *Client) StartFullPass(ctx context.Context, key string) error {
	return c.startPass(ctx, key, 0)
}
