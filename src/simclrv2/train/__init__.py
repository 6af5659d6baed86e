"""The training stages of SimCLRv2 and the loop they share."""
