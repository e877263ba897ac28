"""Student training: batches, distillation losses, the asynchronous learning rate, and the training loop."""
