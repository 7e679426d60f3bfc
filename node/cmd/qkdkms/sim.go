package main

import "qkdkms/quantum/simrun"

func init() {
	register("sim", "run QKD sessions standalone and print a table: sim [--distances 0,25,...] [--blocks ...] [--eve p] [--native]", simrun.RunCLI)
}
