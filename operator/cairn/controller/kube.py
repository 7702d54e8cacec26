"""The CoreV1 calls the operator makes, with JSON bodies in and out. The kubernetes client's
``CoreV1Api`` costs 21 MiB of resident memory once imported (a 4.4 MB module), and its models are
turned back into dicts by the handlers anyway; this goes through the same ``ApiClient`` (auth, TLS,
connection pool) and raises the same ``ApiException``s."""

from __future__ import annotations

from typing import Any

from kubernetes import client

SECRET_PATH = "/api/v1/namespaces/{namespace}/secrets/{name}"


class CoreApi:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    def _call(self, method: str, path: str, params: dict[str, str], query: dict[str, Any] | None = None,
              body: Any = None, header_accept: str = "application/json") -> Any:
        headers = {"Accept": header_accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self.api_client.param_serialize(
            method=method, resource_path=path, path_params=params, query_params=list((query or {}).items()),
            header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self.api_client.call_api(*request)
        response.read()
        return self.api_client.response_deserialize(response, {"2XX": "object"}).data

    def read_namespaced_pod(self, name: str, namespace: str) -> dict:
        return self._call("GET", "/api/v1/namespaces/{namespace}/pods/{name}", {"namespace": namespace, "name": name})

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> dict:
        return self._call("GET", "/api/v1/namespaces/{namespace}/pods", {"namespace": namespace},
                          {"labelSelector": label_selector})

    def create_namespaced_pod(self, namespace: str, body: dict) -> dict:
        return self._call("POST", "/api/v1/namespaces/{namespace}/pods", {"namespace": namespace}, body=body)

    def delete_namespaced_pod(self, name: str, namespace: str) -> dict:
        """With the pod's own grace period, which outlasts the sidecar's drain."""
        return self._call("DELETE", "/api/v1/namespaces/{namespace}/pods/{name}", {"namespace": namespace, "name": name})

    def read_node(self, name: str) -> dict:
        return self._call("GET", "/api/v1/nodes/{name}", {"name": name})

    def create_namespaced_event(self, namespace: str, body: dict) -> dict:
        return self._call("POST", "/api/v1/namespaces/{namespace}/events", {"namespace": namespace}, body=body)

    def read_namespace(self, name: str) -> dict:
        return self._call("GET", "/api/v1/namespaces/{name}", {"name": name})

    def read_namespaced_secret_metadata(self, name: str, namespace: str) -> dict:
        """The Secret's metadata only (a PartialObjectMetadata): whether it exists, never its data."""
        return self._call("GET", SECRET_PATH, {"namespace": namespace, "name": name},
                          header_accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")

    def read_namespaced_secret(self, name: str, namespace: str) -> dict:
        return self._call("GET", SECRET_PATH, {"namespace": namespace, "name": name})

    def create_namespaced_secret(self, namespace: str, body: dict) -> dict:
        return self._call("POST", "/api/v1/namespaces/{namespace}/secrets", {"namespace": namespace}, body=body)
