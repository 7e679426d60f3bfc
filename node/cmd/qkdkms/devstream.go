package main

import "qkdkms/quantum/devstream"

func init() {
	register("devstream", "QKD device streams: devstream record|dump|compare|serve ... (serve: a live Alice/Bob device emulator; see quantum/devstream/FORMAT.md)", devstream.RunCLI)
}
