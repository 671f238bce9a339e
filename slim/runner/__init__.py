"""Running the stages, the top layer: the stage registry (stages), `--check` and the planner (check), the pipeline
job, the job scripts' shared front door (cli), the config reference (configdoc) and the run-directory migration."""
