package kme

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"testing"

	"qkdkms/etsi"
	"qkdkms/etsi/etsitest"
	"qkdkms/plugins/testenv"
)

// TestConformance runs the etsi conformance suite against two real sites
// of three nodes each; the suite's SAEs call followers (forwarding) and
// the key material reaches the pools through the admin import.
func TestConformance(t *testing.T) {
	w := newWorld(t, worldOpts{nodes: 3, noSync: true}, siteA, siteB)
	a, b := w.sites[siteA], w.sites[siteB]
	etsitest.Run(t, etsitest.Harness{
		Master:  etsitest.Site{URL: a.follower(0).srv.URL, KMEID: siteA},
		Slave:   etsitest.Site{URL: b.follower(1).srv.URL, KMEID: siteB},
		RootCAs: w.pool,
		ClientCert: func(sae string) (tls.Certificate, error) {
			leaf, err := w.ca.IssueSAE(sae)
			if err != nil {
				return tls.Certificate{}, err
			}
			return leaf.TLS()
		},
		NoIdentityCert: func() (tls.Certificate, error) {
			leaf, err := w.ca.IssueNode("some-node", siteA, nil)
			if err != nil {
				return tls.Certificate{}, err
			}
			return leaf.TLS()
		},
		Register: func(ctx context.Context, c etsi.ConnectionInfo) error {
			return a.follower(1).kme.RegisterConnection(ctx, c)
		},
		Fill: func(ctx context.Context, master, slave string, material []byte) error {
			return b.follower(0).kme.ImportBlock(ctx, master, slave, newUUID(), material)
		},
		Levels: func(ctx context.Context) (map[string]int, error) {
			out := map[string]int{}
			for _, s := range []*tsite{a, b} {
				var l *tnode
				if err := testenv.Until(ctx, "a leader at site "+s.id, func() bool { l = s.leader(); return l != nil }); err != nil {
					return nil, err
				}
				cs, err := l.store.Connections(ctx)
				if err != nil {
					return nil, err
				}
				for _, c := range cs {
					p := s.id + " " + c.ID() + " "
					out[p+"stored_bits"] = int(c.StoredBits)
					out[p+"issued"] = int(c.IssuedKeys)
					out[p+"burned"] = int(c.BurnedKeys)
					out[p+"erased"] = int(c.ErasedKeys)
				}
			}
			return out, nil
		},
	})
}

// TestMulticastRefetch: a slave fetches its share of a multicast key twice:
// the second answer is "keys not found" (400), and the other named slave
// still gets its share, with the same bytes.
func TestMulticastRefetch(t *testing.T) {
	w := newWorld(t, worldOpts{nodes: 3, noSync: true}, siteA, siteB)
	ctx := ctxT(t)
	w.register(ctx, siteA, w.connection(siteA, siteB, "pm", "ps1"))
	w.register(ctx, siteA, w.connection(siteA, siteB, "pm", "ps2"))
	w.importBits(ctx, siteA, "pm", "ps1", 32)
	keys, err := w.sites[siteA].follower(0).kme.EncKeys(ctx, etsi.EncRequest{MasterSAE: "pm", SlaveSAE: "ps1", Additional: []string{"ps2"}, Number: 1, Size: 256})
	if err != nil {
		t.Fatal(err)
	}
	fb := w.sites[siteB].follower(0).kme
	req := etsi.DecRequest{SlaveSAE: "ps1", MasterSAE: "pm", KeyIDs: []string{keys[0].KeyID}}
	if _, err := fb.DecKeys(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := fb.DecKeys(ctx, req); !errors.Is(err, etsi.ErrKeysNotFound) {
		t.Fatalf("second fetch of the same share: %v, want ErrKeysNotFound", err)
	}
	got, err := fb.DecKeys(ctx, etsi.DecRequest{SlaveSAE: "ps2", MasterSAE: "pm", KeyIDs: []string{keys[0].KeyID}})
	if err != nil || !bytes.Equal(got[0].Bits, keys[0].Bits) {
		t.Fatalf("second slave's share: %v", err)
	}
}
