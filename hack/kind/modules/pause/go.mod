// Module kindpause is the pod sandbox's pause process for the kind node image.
module kindpause

go 1.24.0
