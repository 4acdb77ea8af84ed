"""`prdit plan`: what every GPU job of the DAG costs (FLOPs, GPU memory, hours) before anything runs."""
