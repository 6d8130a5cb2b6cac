"""What differs between the model libraries ST-Adapters integrate with: creating a backbone from a name, its
own image feature, its head, its checkpointing switch and checkpoint files. One module per library, the same
functions in each; `integrations.backbones` puts them in its table."""
