"""Pulumi stacks for simple-tftpd sites on AWS, Azure and GCP.

`site` is the cloud-neutral model of one site, derived from the daemon's own config model;
`cloud_init` renders the node user data; `policy` checks declared resources; `component` is
the base of every component; `inventory` the outputs the fabfile reads; one package per cloud
holds that cloud's components and its Pulumi project.
"""
