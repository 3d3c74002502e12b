"""The pod layer: what a pod is and does, below the Task and Sandbox API doors.

`pod.Pod` owns the pod's Sandbox (VM, network, share), its containers and what watches
them (`watch`), and reports exits, OOM kills and its VM's death through one callback
(`events`). A `container.Container` owns its processes (`process`, `process_io`) and
prepares the spec and volumes it gives the guest; `sizing` says how big the VM is and
`cri` what a Sandbox API pod asked for. Errors here are domain errors (`errors`); the
doors turn them into ttrpc codes in one place (shim.task_service.errors).
"""
