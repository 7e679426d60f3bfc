package main

import "qkdkms/testcluster"

func init() {
	register("demo", "run the two-site demo (make run): demo [flags]", testcluster.RunDemo)
	register("demo-init", "write a demo layout (PKI, KEKs, node configs): demo-init [flags]", testcluster.DemoInit)
}

func init() {
	register("experiment", "failover experiments: experiment run [flags] SCENARIO...|all, experiment list", testcluster.RunExperiment)
}
