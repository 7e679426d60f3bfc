package sim

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
)

// chunkPulses is the number of pulses one worker processes with one random
// stream. Results depend on it (not on the number of workers), so it is
// fixed.
const chunkPulses = 1 << 22

func numChunks(n uint64) int { return int((n + chunkPulses - 1) / chunkPulses) }

// forChunks runs fn over the chunks of [0, n) on workers goroutines (0:
// GOMAXPROCS).
func forChunks(ctx context.Context, n uint64, workers int, fn func(c int, lo, hi uint64)) error {
	nc := numChunks(n)
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, nc)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c := int(next.Add(1) - 1)
				if c >= nc {
					return
				}
				lo := uint64(c) * chunkPulses
				fn(c, lo, min(n, lo+chunkPulses))
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}
