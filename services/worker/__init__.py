"""The worker: claims runs, calls the hosted model, streams events back. Stateless."""
