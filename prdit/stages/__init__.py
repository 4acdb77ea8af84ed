"""One module per `prdit <command>`: reads the parameters, calls the library, logs to MLflow, writes outputs."""
