"""The example app of deploy/: consumer group orders-projector on the topic orders."""
