"""The namespace is the tenant: each namespace the operator serves gets its own PostgreSQL schema and
LOGIN role, its own object-store user limited to ``<bucket>/<namespace>/``, and one Secret holding both.

``naming`` is pure (names, the object-store policy, the Secret's data); ``database`` and ``objectstore``
do the provisioning against the servers with the admin credentials the operator holds.
"""
