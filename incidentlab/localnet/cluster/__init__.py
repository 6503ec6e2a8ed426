"""The embedded provider cluster: the part of the Kubernetes API that the lab uses, on 127.0.0.1.

Standard library only, so it runs wherever the validators run. Start it with
``python -m incidentlab.localnet.cluster --network FILE --name virtengine-cluster``.
"""
