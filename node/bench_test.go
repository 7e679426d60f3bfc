package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"qkdkms/etsi"
)

// BenchmarkNodeEncKeys: 32 concurrent master SAEs call enc_keys (1 key of
// 256 bits) over HTTPS with keep-alive on a 3-node master site (fsync on)
// relaying to a 1-node slave site, once at the leader and once at a
// follower (proxied to the leader). Reports keys/s and latency.
func BenchmarkNodeEncKeys(b *testing.B) {
	for _, at := range []string{"leader", "follower"} {
		b.Run(at, func(b *testing.B) { benchEnc(b, at) })
	}
}

func benchEnc(b *testing.B, at string) {
	p := newTestPKI(b)
	sa := allocSite(b, p, "site_a", 3)
	sb := allocSite(b, p, "site_b", 1)
	sa.boot(map[string][]string{"site_b": sb.allAddrs()})
	sb.boot(map[string][]string{"site_a": sa.allAddrs()})
	ctx := context.Background()
	l := sa.leader()
	sb.leader()
	if err := l.services.kme.RegisterConnection(ctx, etsi.ConnectionInfo{
		SourceKME: "site_a", TargetKME: "site_b", MasterSAE: "alice", SlaveSAE: "bob",
		KeySize: 256, MaxKeyCount: 1 << 30, MaxKeyPerRequest: 16, MinKeySize: 64, MaxKeySize: 1024,
	}); err != nil {
		b.Fatal(err)
	}
	const blockBytes = 64 << 10 // 2048 keys
	for i := 0; i <= b.N/2048; i++ {
		bits := make([]byte, blockBytes)
		_, _ = rand.Read(bits)
		if err := l.services.kme.ImportBlock(ctx, "alice", "bob", fmt.Sprintf("blk-%d", i), bits); err != nil {
			b.Fatal(err)
		}
	}
	target := l
	if at == "follower" {
		target = sa.follower()
	}
	alice := newSAE(b, p, "alice")
	body, _ := json.Marshal(etsi.KeyRequest{Number: 1})
	url := "https://" + target.Addr() + "/api/v1/keys/bob/enc_keys"
	var next atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				resp, err := alice.http.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					continue
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d calls failed", f, b.N)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(len(lat))/el.Seconds(), "keys/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
