"""Driving Slurm: sbatch array jobs per suite, a vLLM model-server job, merge and report jobs.

`submit` renders the templates in `slurm/` and submits them with dependencies, `status` reads
the jobs' states back (squeue/scontrol; sacct when accounting exists) beside the results store,
`resume` resubmits what did not finish. The store, not Slurm, is the truth about what is done:
Slurm forgets jobs (MinJobAge) when there is no accounting.
"""
