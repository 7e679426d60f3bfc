package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"qkdkms/node"
	"qkdkms/node/network"
)

func init() {
	register("network", "trusted-node network: network status [admin flags]", runNetwork)
}

func runNetwork(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprintln(stderr, "usage: qkdkms network status [admin flags]")
		return 2
	}
	return adminCall(ctx, "network status", "network status [admin flags]", args[1:], stdout, stderr, nil, nArgs(0),
		func(ctx context.Context, c *node.AdminClient, _ []string) (network.Status, error) {
			return c.Network(ctx)
		},
		printNetwork)
}

// printNetwork shows every site's links with their relay key per
// direction, then the routes to the sites without a direct link.
func printNetwork(w io.Writer, st network.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tLINK TO\tUP\tQBER\tRELAY OUT\tRELAY IN\tREPORT AGE")
	for _, s := range st.Sites {
		age := "here"
		switch {
		case s.KME != st.KME && s.AgeSeconds < 0:
			age = "never answered"
		case s.KME != st.KME:
			age = fmt.Sprintf("%.1fs", s.AgeSeconds)
		}
		if len(s.Links) == 0 {
			fmt.Fprintf(tw, "%s\t-\t\t\t\t\t%s\n", s.KME, age)
		}
		for _, l := range s.Links {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%.2f%%\t%d B\t%d B\t%s\n", s.KME, l.Peer, l.Up, 100*l.QBER, l.Out, l.In, age)
		}
	}
	_ = tw.Flush()
	dests := make([]string, 0, len(st.Routes))
	for d := range st.Routes {
		dests = append(dests, d)
	}
	sort.Strings(dests)
	fmt.Fprintf(w, "\nroutes from %s (widest path; relay key of the narrowest hop):\n", st.KME)
	if len(dests) == 0 {
		fmt.Fprintln(w, "  none (every other site has a direct link, or no route has relay key)")
	}
	for _, d := range dests {
		rt := st.Routes[d]
		fmt.Fprintf(w, "  %s: %s (%d B)\n", d, strings.Join(rt.Path, " → "), rt.Width)
	}
	if len(st.Avoided) > 0 {
		fmt.Fprintf(w, "avoided after a failed hop: %s\n", strings.Join(st.Avoided, ", "))
	}
	s := st.Stats
	fmt.Fprintf(w, "relayed from here (this leader): %d blocks (%d bits), %d burned, block time p50 %.0f ms, p99 %.0f ms; passed on: %d; delivered here: %d\n",
		s.Delivered, s.DeliveredBits, s.Burned, 1000*s.P50Seconds, 1000*s.P99Seconds, s.Forwarded, s.Received)
	if len(st.Connections) > 0 {
		fmt.Fprintln(w, "\nrelayed connections (from the log):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MASTER\tSLAVE\tTARGET\tBLOCKS\tBITS\tBURNED\tPENDING")
		for _, c := range st.Connections {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", c.Master, c.Slave, c.Target, c.Relay.Done, c.Relay.DoneBits, c.Relay.Burned, c.Pending)
		}
		_ = tw.Flush()
	}
}
