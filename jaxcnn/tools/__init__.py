"""Tools on top of the library: the worked example's walkthrough, gradcheck, the benchmark (and
its PyTorch twin), and the `jaxcnn` command line (`jaxcnn.tools.cli`)."""
